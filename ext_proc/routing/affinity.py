"""Session affinity: open-model requests that share a session key stay on one model.

A client sends ``X-Model-Affinity: <key>`` (Plano's header). The first open-model
request for a key is decided as usual (preference router or default model) and
the decision is pinned; later requests with that key reuse it for ``ttl_s``
without asking the router again, so a conversation never switches models
mid-way. Explicit models and aliases are never pinned: the client chose those.

Pins live in memory, one ``AffinityCache`` per ext_proc worker process: a bounded
LRU whose entries expire ``ttl_s`` after they were pinned. A pin names a model,
not a routing table, so it survives config reloads; it is re-resolved against
the current table on every use and dropped when a reload removed its model.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ext_proc.config import AffinitySettings
from ext_proc.errors import GatewayError
from ext_proc.routing.resolve import Resolution, RoutingDecision, RoutingTable, resolve_pinned

__all__ = ["AffinityCache", "Pin", "process_pins", "session_key"]

_MAX_KEY_CHARS = 128
"""Longer keys are stored as a digest: the cache's memory stays bounded whatever
a client sends (Envoy admits header values of up to 60 KiB)."""


@dataclass(frozen=True, slots=True)
class Pin:
    """The part of a decision that a session keeps."""

    model: str
    resolution: Resolution
    route: str | None


def session_key(value: str) -> str | None:
    """The cache key for a header value; ``None`` for a blank one (no affinity)."""
    value = value.strip()
    if not value:
        return None
    if len(value) <= _MAX_KEY_CHARS:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class AffinityCache:
    """Session key -> ``Pin``: least recently used first out, each entry for ``ttl_s``."""

    def __init__(
        self,
        ttl_s: float,
        max_entries: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Pin]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def resize(self, ttl_s: float, max_entries: int) -> None:
        """Apply new settings (a config reload); pins already made keep their expiry."""
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        while len(self._entries) > max_entries:
            self._entries.popitem(last=False)

    def get(self, key: str) -> Pin | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, pin = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return pin

    def put(self, key: str, pin: Pin) -> None:
        self._entries[key] = (self._clock() + self.ttl_s, pin)
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def recall(
        self, key: str, table: RoutingTable, requested: str | None
    ) -> RoutingDecision | None:
        """The pinned decision for ``key``, resolved against ``table``, or ``None``
        (no pin, an expired one, or one whose model ``table`` no longer serves)."""
        pin = self.get(key)
        if pin is None:
            return None
        try:
            return resolve_pinned(table, requested, pin.model, pin.resolution, pin.route)
        except GatewayError:
            # A reload removed the model (or made it ambiguous): never route to a
            # model the config no longer has; decide afresh and pin that instead.
            self.forget(key)
            return None

    def remember(self, key: str, decision: RoutingDecision) -> None:
        self.put(key, Pin(decision.model, decision.resolution, decision.route))


_process_pins: AffinityCache | None = None


def process_pins(settings: AffinitySettings) -> AffinityCache:
    """This process's cache, created on first use and resized when a reload
    changed the settings. Pins are per worker process by design: sharing them
    would need a store every worker reaches (Plano's Redis option)."""
    global _process_pins
    pins = _process_pins
    if pins is None:
        pins = _process_pins = AffinityCache(settings.ttl_s, settings.max_entries)
    elif pins.ttl_s != settings.ttl_s or pins.max_entries != settings.max_entries:
        pins.resize(settings.ttl_s, settings.max_entries)
    return pins
