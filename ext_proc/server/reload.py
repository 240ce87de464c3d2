"""Config reload: on SIGHUP or a changed file, load the config again and, if it
is valid and Envoy can serve it as it runs, swap it in.

Requests already in flight keep the routing table they started with (each
``RoutingProcessor`` captures it), so a reload never changes the rules under a
request. A new config that is invalid, or that needs a different Envoy
bootstrap (a new upstream endpoint, a listener change), is rejected with the
reason logged, and the running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ext_proc.config import Config, ConfigError, load_config
from ext_proc.deploy.bootstrap import bootstrap_dict
from ext_proc.telemetry.observe import config_reloaded

__all__ = ["ConfigReloader", "ReloadResult", "check_reloadable"]

log = logging.getLogger("archway.reload")

# Fixed stand-ins: only the config's own part of the bootstrap is compared.
_PROBE_HOST = "127.0.0.1"
_PROBE_PORT = 1


@dataclass(frozen=True)
class ReloadResult:
    applied: bool
    reason: str
    outcome: str = "applied"
    """For the reload counter: ``applied``, ``invalid``, ``unreadable`` or ``needs_restart``."""


def check_reloadable(current: Config, new: Config) -> str | None:
    """Why ``new`` cannot replace ``current`` without restarting Envoy, or ``None``.

    Envoy's listeners and clusters come from its bootstrap; a config that would
    render a different one needs Envoy restarted with it.
    """
    kwargs = {"ext_proc_host": _PROBE_HOST, "ext_proc_port": _PROBE_PORT, "admin_port": 0}
    if bootstrap_dict(current, **kwargs) != bootstrap_dict(new, **kwargs):
        return (
            "the new config changes Envoy's listeners or upstream endpoints; "
            "re-render the bootstrap (archway render) and restart Envoy (or archway up)"
        )
    # The preference router is loaded once, with its routes, when the server
    # starts; a reload that changed either would be silently half-applied.
    if current.router != new.router or current.routing_preferences != new.routing_preferences:
        return (
            "the new config changes the preference router or its routing_preferences, "
            "which load when the server starts; restart archway serve (or archway up)"
        )
    return None


class ConfigReloader:
    """Watches ``path`` and calls ``apply`` with each good new config.

    Triggers: SIGHUP (when installed on the running loop) and a change of the
    file's modification time or size, polled every ``poll_s`` seconds.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        current: Config,
        apply: Callable[[Config], None],
        *,
        poll_s: float = 1.0,
    ) -> None:
        self._path = Path(path)
        self._current = current
        self._apply = apply
        self._poll_s = poll_s
        self._stamp = self._file_stamp()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.results: list[ReloadResult] = []

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self._path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def reload(self) -> ReloadResult:
        """Load the file now and apply it if it can be applied."""
        self._stamp = self._file_stamp()
        try:
            new = load_config(self._path)
        except ConfigError as exc:
            # ConfigError lines never contain secrets; the loader masks them.
            result = ReloadResult(False, "invalid config: " + "; ".join(exc.problems), "invalid")
        except OSError as exc:
            result = ReloadResult(False, f"cannot read config: {exc.strerror or exc}", "unreadable")
        else:
            reason = check_reloadable(self._current, new)
            if reason is None:
                self._apply(new)
                self._current = new
                result = ReloadResult(True, "config reloaded")
            else:
                result = ReloadResult(False, reason, "needs_restart")
        if result.applied:
            log.info("%s from %s", result.reason, self._path)
        else:
            log.error("config reload rejected, keeping the running config: %s", result.reason)
        self.results.append(result)
        config_reloaded(result.outcome)
        return result

    def start(self, *, install_sighup: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_sighup:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                # Only the main thread may install signal handlers.
                loop.add_signal_handler(signal.SIGHUP, self._wake.set)
        self._task = loop.create_task(self._run(), name="archway-config-reloader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_s)
            signalled = self._wake.is_set()
            self._wake.clear()
            if signalled or self._file_stamp() != self._stamp:
                self.reload()
