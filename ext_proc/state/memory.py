"""Conversation state in process memory: an LRU bounded by entries and bytes,
each entry with its own expiry.

Items are kept as their JSON text: the size bound is exact, and what ``get``
returns is a fresh copy no caller can change under another. State lives as
long as the process (per worker with ``--workers``): ``postgres`` is the
backend that survives restarts and is shared.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ext_proc.state import Item, StateStorageError, response_not_found

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ENTRIES", "SWEEP_INTERVAL_S", "MemoryStore"]

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
SWEEP_INTERVAL_S = 60.0
"""How often a ``put`` also drops every expired entry, not only the ones looked up."""


class _Entry(NamedTuple):
    expires: float
    text: str
    size: int


class MemoryStore:
    """The least recently used conversations go first when a bound is reached."""

    __slots__ = ("_bytes", "_clock", "_entries", "_max_bytes", "_max_entries", "_next_sweep")

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a memory store needs room for at least one entry")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        """Least recently used first."""
        self._bytes = 0
        self._next_sweep = clock() + SWEEP_INTERVAL_S

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def get(self, response_id: str) -> list[Item]:
        entry = self._entries.get(response_id)
        if entry is None:
            raise response_not_found(response_id)
        if entry.expires <= self._clock():
            self._remove(response_id)
            raise response_not_found(response_id)
        self._entries.move_to_end(response_id)
        return json.loads(entry.text)

    async def put(self, response_id: str, items: Sequence[Item], ttl_s: float) -> None:
        text = json.dumps(list(items), ensure_ascii=False, separators=(",", ":"))
        size = len(text.encode())
        self._remove(response_id)
        if size > self._max_bytes:
            raise StateStorageError(
                f"a conversation of {size} bytes is larger than the whole memory store "
                f"({self._max_bytes} bytes); it was not stored"
            )
        now = self._clock()
        self._entries[response_id] = _Entry(now + ttl_s, text, size)
        self._bytes += size
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_S
            for key in [k for k, e in self._entries.items() if e.expires <= now]:
                self._remove(key)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._remove(next(iter(self._entries)))

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _remove(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self._bytes -= entry.size
