"""State every ext_proc process must agree on: session pins and token counters.

Three stores behind one interface (``SharedState``):

- ``LocalState``: this process's memory. Right for one ext_proc process.
- ``FileState``: a SQLite file that every worker process of one machine opens
  (``archway serve --workers N`` and ``archway up`` create it and hand its path
  to the workers in ``ARCHWAY_SHARED_STATE_FILE``). Each operation is one short
  ``BEGIN IMMEDIATE`` transaction, so a pin is claimed, and a counter checked and
  added to, atomically across processes. Chosen over routing each session to
  one worker because limits are per client, not per session: a client's
  requests spread over every worker, so their counts must meet somewhere.
- ``RedisState`` (``ext_proc.state.redis_state``): several gateways on several
  machines share one Redis (``archway: {redis: redis://...}``).

Counters are fixed windows aligned to the epoch (a minute, an hour), keyed by
the window, so every process and replica agrees on when a window ends without
talking: ``Retry-After`` is the time left in the current window.

``FailOpen`` wraps a remote store: when it cannot be reached, requests still
flow. Limits admit, pins fall back to this process's memory, a log line (at
most one per ``_LOG_EVERY_S``) and ``archway_shared_state_errors_total`` say so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "SHARED_STATE_FILE_ENV",
    "Admission",
    "FailOpen",
    "FileState",
    "LocalState",
    "SharedState",
    "window_of",
]

log = logging.getLogger("archway.state")

SHARED_STATE_FILE_ENV = "ARCHWAY_SHARED_STATE_FILE"
"""Set by a worker pool's parent: the SQLite file its workers share."""

_LOG_EVERY_S = 10.0
_TRIM_EVERY = 512
"""Expired pins and past windows are swept once per this many writes."""


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    total: int
    """The window's count after this request (allowed) or as it stands (refused)."""
    retry_after_s: float
    """Seconds until the window ends and the count starts again from zero."""


def window_of(window_s: int, now: float) -> tuple[int, float]:
    """The window index for ``now`` and the epoch second it ends at."""
    index = int(now // window_s)
    return index, float((index + 1) * window_s)


class SharedState(Protocol):
    kind: str
    """``memory``, ``file`` or ``redis``: labels metrics and log lines."""

    async def claim_pin(self, key: str, value: str, ttl_s: float) -> str | None:
        """Pin ``key`` to ``value`` unless a live pin exists: returns that pin's value,
        or ``None`` when this call made the pin."""
        ...

    async def get_pin(self, key: str) -> str | None: ...

    async def drop_pin(self, key: str) -> None: ...

    async def admit(self, key: str, amount: int, limit: int, window_s: int) -> Admission:
        """Add ``amount`` to the window's count only if the count stays within ``limit``."""
        ...

    async def add(self, key: str, amount: int, window_s: int) -> None:
        """Add ``amount`` (may be negative: a prompt estimate corrected) whatever the limit."""
        ...

    async def close(self) -> None: ...


class LocalState:
    """One process's pins (bounded LRU, each for its TTL) and counters."""

    kind = "memory"

    def __init__(self, max_pins: int = 10_000, *, clock: Callable[[], float] = time.time) -> None:
        self.max_pins = max_pins
        self._clock = clock
        self._pins: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._counters: dict[str, tuple[int, int, float]] = {}
        """key -> (window index, count, window end); an older window is simply replaced."""
        self._writes = 0

    async def claim_pin(self, key: str, value: str, ttl_s: float) -> str | None:
        held = self._live_pin(key)
        if held is not None:
            return held
        self._pins[key] = (self._clock() + ttl_s, value)
        self._pins.move_to_end(key)
        while len(self._pins) > self.max_pins:
            self._pins.popitem(last=False)
        return None

    async def get_pin(self, key: str) -> str | None:
        return self._live_pin(key)

    def _live_pin(self, key: str) -> str | None:
        entry = self._pins.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._pins[key]
            return None
        self._pins.move_to_end(key)
        return entry[1]

    async def drop_pin(self, key: str) -> None:
        self._pins.pop(key, None)

    def _count(self, key: str, index: int) -> int:
        entry = self._counters.get(key)
        return entry[1] if entry is not None and entry[0] == index else 0

    async def admit(self, key: str, amount: int, limit: int, window_s: int) -> Admission:
        now = self._clock()
        index, end = window_of(window_s, now)
        total = self._count(key, index)
        if total + amount > limit:
            return Admission(False, total, end - now)
        self._set(key, index, total + amount, end, now)
        return Admission(True, total + amount, end - now)

    async def add(self, key: str, amount: int, window_s: int) -> None:
        now = self._clock()
        index, end = window_of(window_s, now)
        self._set(key, index, max(0, self._count(key, index) + amount), end, now)

    def _set(self, key: str, index: int, total: int, end: float, now: float) -> None:
        self._counters[key] = (index, total, end)
        self._writes += 1
        if self._writes % _TRIM_EVERY == 0:
            # Keys are per client or per selector value: drop those whose window
            # passed, so a stream of one-off header values cannot grow this forever.
            self._counters = {k: v for k, v in self._counters.items() if v[2] > now}

    async def close(self) -> None:
        self._pins.clear()
        self._counters.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS pins (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY, window INTEGER NOT NULL, total INTEGER NOT NULL, expires REAL NOT NULL
);
"""


class FileState:
    """Pins and counters in a SQLite file shared by the worker processes of one machine.

    Calls are synchronous on purpose: each is one transaction of a few
    microseconds on a local file (see docs/usage-and-limits.md for the cost),
    cheaper than handing it to a thread. A lock held by another worker is
    waited for at most ``busy_timeout_ms``; past that the operation raises
    ``sqlite3.OperationalError`` and ``FailOpen`` lets the request through.
    """

    kind = "file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_pins: int = 10_000,
        *,
        busy_timeout_ms: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_pins = max_pins
        self._clock = clock
        self._db = sqlite3.connect(
            self.path, isolation_level=None, timeout=busy_timeout_ms / 1000, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # No fsync: the file lives on tmpfs where there is one, and a pool makes
        # a new one at each start, so nothing outlives a crash to be corrupt.
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)
        self._writes = 0

    @contextlib.contextmanager
    def _transaction(self) -> sqlite3.Cursor:  # type: ignore[misc]
        cursor = self._db.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    async def claim_pin(self, key: str, value: str, ttl_s: float) -> str | None:
        now = self._clock()
        with self._transaction() as cur:
            row = cur.execute(
                "SELECT value FROM pins WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
            if row is not None:
                return str(row[0])
            cur.execute(
                "INSERT OR REPLACE INTO pins (key, value, expires) VALUES (?, ?, ?)",
                (key, value, now + ttl_s),
            )
            self._trim(cur, now)
        return None

    async def get_pin(self, key: str) -> str | None:
        row = self._db.execute(
            "SELECT value FROM pins WHERE key = ? AND expires > ?", (key, self._clock())
        ).fetchone()
        return None if row is None else str(row[0])

    async def drop_pin(self, key: str) -> None:
        self._db.execute("DELETE FROM pins WHERE key = ?", (key,))

    async def admit(self, key: str, amount: int, limit: int, window_s: int) -> Admission:
        now = self._clock()
        index, end = window_of(window_s, now)
        with self._transaction() as cur:
            total = self._current(cur, key, index)
            if total + amount > limit:
                return Admission(False, total, end - now)
            self._store(cur, key, index, total + amount, end)
            self._trim(cur, now)
        return Admission(True, total + amount, end - now)

    async def add(self, key: str, amount: int, window_s: int) -> None:
        now = self._clock()
        index, end = window_of(window_s, now)
        with self._transaction() as cur:
            total = self._current(cur, key, index)
            self._store(cur, key, index, max(0, total + amount), end)

    @staticmethod
    def _current(cur: sqlite3.Cursor, key: str, index: int) -> int:
        row = cur.execute(
            "SELECT total FROM counters WHERE key = ? AND window = ?", (key, index)
        ).fetchone()
        return int(row[0]) if row is not None else 0

    @staticmethod
    def _store(cur: sqlite3.Cursor, key: str, index: int, total: int, end: float) -> None:
        cur.execute(
            "INSERT OR REPLACE INTO counters (key, window, total, expires) VALUES (?, ?, ?, ?)",
            (key, index, total, end),
        )

    def _trim(self, cur: sqlite3.Cursor, now: float) -> None:
        self._writes += 1
        if self._writes % _TRIM_EVERY:
            return
        cur.execute("DELETE FROM pins WHERE expires <= ?", (now,))
        cur.execute("DELETE FROM counters WHERE expires <= ?", (now,))
        cur.execute(
            "DELETE FROM pins WHERE key IN (SELECT key FROM pins ORDER BY expires "
            "LIMIT max(0, (SELECT count(*) FROM pins) - ?))",
            (self.max_pins,),
        )

    async def close(self) -> None:
        self._db.close()


class FailOpen:
    """A shared store that never fails a request: errors admit, pins go local.

    After an error the store is not asked again for ``retry_after_s``, so a
    Redis that is down (or a host that drops packets) costs one timeout per
    ``retry_after_s``, not one per request.
    """

    def __init__(
        self,
        inner: SharedState,
        local: LocalState,
        *,
        on_error: Callable[[str, str], None] | None = None,
        retry_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.local = local
        self.kind = inner.kind
        self._on_error = on_error
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._down_until = 0.0
        self._logged_at = -_LOG_EVERY_S

    def _up(self) -> bool:
        return self._clock() >= self._down_until

    def _failed(self, operation: str, exc: BaseException) -> None:
        now = self._clock()
        self._down_until = now + self._retry_after_s
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning(
                "shared state (%s) unavailable during %s: %s; limits are not enforced and "
                "session pins are this process's own until it is back",
                self.kind,
                operation,
                _describe(exc),
            )
        if self._on_error is not None:
            self._on_error(self.kind, operation)

    async def claim_pin(self, key: str, value: str, ttl_s: float) -> str | None:
        if self._up():
            try:
                return await self.inner.claim_pin(key, value, ttl_s)
            except Exception as exc:
                self._failed("claim_pin", exc)
        return await self.local.claim_pin(key, value, ttl_s)

    async def get_pin(self, key: str) -> str | None:
        if self._up():
            try:
                return await self.inner.get_pin(key)
            except Exception as exc:
                self._failed("get_pin", exc)
        return await self.local.get_pin(key)

    async def drop_pin(self, key: str) -> None:
        await self.local.drop_pin(key)
        if self._up():
            try:
                await self.inner.drop_pin(key)
            except Exception as exc:
                self._failed("drop_pin", exc)

    async def admit(self, key: str, amount: int, limit: int, window_s: int) -> Admission:
        if self._up():
            try:
                return await self.inner.admit(key, amount, limit, window_s)
            except Exception as exc:
                self._failed("admit", exc)
        return Admission(True, 0, 0.0)

    async def add(self, key: str, amount: int, window_s: int) -> None:
        if self._up():
            try:
                await self.inner.add(key, amount, window_s)
            except Exception as exc:
                self._failed("add", exc)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.inner.close()
        await self.local.close()


def _describe(exc: BaseException) -> str:
    # Never the exception's repr: a Redis URL with a password may be in it.
    text = str(exc).split("\n", 1)[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
