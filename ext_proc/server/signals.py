"""The process signals a long-running command waits on, as an asyncio queue.

``archway serve`` (one process or a pool's parent) and ``archway up`` all wait
the same way: SIGINT and SIGTERM stop, and SIGHUP, where the command takes it,
reloads the config. A handler installed on the event loop only queues the
signal; the command decides what each one means, in order of arrival, so a
second SIGTERM can cut a drain short.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from types import TracebackType
from typing import Self

__all__ = ["STOP_SIGNALS", "SignalQueue"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalQueue:
    """Queues ``signals`` as the running loop receives them; a context manager
    that puts the default handlers back on exit."""

    def __init__(self, *signals: signal.Signals) -> None:
        self._signals = signals or STOP_SIGNALS
        self._queue: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        for sig in self._signals:
            self._loop.add_signal_handler(sig, self._queue.put_nowait, sig)

    async def get(self) -> signal.Signals:
        """The next signal, waiting for it as long as it takes."""
        return await self._queue.get()

    async def get_within(self, timeout_s: float) -> signal.Signals | None:
        """The next signal, or ``None`` when none arrives within ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self._queue.get(), timeout_s)
        return None

    def close(self) -> None:
        for sig in self._signals:
            with contextlib.suppress(RuntimeError, ValueError):
                self._loop.remove_signal_handler(sig)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
