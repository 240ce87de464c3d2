"""Session affinity: open-model requests that share a session key stay on one model.

A client sends ``X-Model-Affinity: <key>`` (Plano's header). The first open-model
request for a key is decided as usual (preference router or default model) and
the decision is pinned; later requests with that key reuse it for ``ttl_s``
without asking the router again, so a conversation never switches models
mid-way. Explicit models and aliases are never pinned: the client chose those.

Pins live in the process's ``SharedState`` (``ext_proc.state``): this process's
memory with one ext_proc process, a file every worker of the machine shares
with several, Redis across replicas. A pin is claimed atomically (set only if
absent), so a session gets one pin however many workers or gateways see its
first requests at once; the one that loses the race takes the winner's.

A pin names a model, not a routing table, so it survives config reloads; it is
re-resolved against the current table on every use and dropped when a reload
removed its model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ext_proc.errors import GatewayError
from ext_proc.routing.resolve import Resolution, RoutingDecision, RoutingTable, resolve_pinned
from ext_proc.state.shared import SharedState

__all__ = ["Pin", "claim", "recall", "session_key"]

_MAX_KEY_CHARS = 128
"""Longer keys are stored as a digest: the store's memory stays bounded whatever
a client sends (Envoy admits header values of up to 60 KiB)."""

_SEP = "\x1f"
"""Between a pin's fields when stored: a model name never contains it."""


@dataclass(frozen=True, slots=True)
class Pin:
    """The part of a decision that a session keeps."""

    model: str
    resolution: Resolution
    route: str | None

    def encode(self) -> str:
        return _SEP.join((self.model, self.resolution.value, self.route or ""))

    @staticmethod
    def decode(value: str) -> Pin | None:
        parts = value.split(_SEP)
        if len(parts) != 3:
            return None
        try:
            resolution = Resolution(parts[1])
        except ValueError:
            return None
        return Pin(parts[0], resolution, parts[2] or None)

    @staticmethod
    def of(decision: RoutingDecision) -> Pin:
        return Pin(decision.model, decision.resolution, decision.route)


def session_key(value: str, tenant: str | None = None) -> str | None:
    """The store key for a header value (within ``tenant``, Plano's
    ``session_cache.tenant_header``); ``None`` for a blank one (no affinity)."""
    value = value.strip()
    if not value:
        return None
    if tenant:
        value = f"{tenant}:{value}"
    if len(value) <= _MAX_KEY_CHARS:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _resolve(table: RoutingTable, requested: str | None, pin: Pin) -> RoutingDecision | None:
    try:
        return resolve_pinned(table, requested, pin.model, pin.resolution, pin.route)
    except GatewayError:
        # A reload removed the model (or made it ambiguous): never route to a
        # model the config no longer has.
        return None


async def recall(
    state: SharedState, key: str, table: RoutingTable, requested: str | None
) -> RoutingDecision | None:
    """The pinned decision for ``key``, resolved against ``table``, or ``None``
    (no pin, an expired one, or one whose model ``table`` no longer serves, which
    is then dropped so that the session is decided and pinned afresh)."""
    value = await state.get_pin(key)
    if value is None:
        return None
    pin = Pin.decode(value)
    decision = _resolve(table, requested, pin) if pin is not None else None
    if decision is None:
        await state.drop_pin(key)
    return decision


async def claim(
    state: SharedState,
    key: str,
    decision: RoutingDecision,
    ttl_s: float,
    table: RoutingTable,
    requested: str | None,
) -> RoutingDecision | None:
    """Pin ``decision`` for ``key``. ``None`` when this call made the pin; the
    pinned decision when another request (worker, gateway) pinned the session
    first, which this request then follows."""
    held = await state.claim_pin(key, Pin.of(decision).encode(), ttl_s)
    if held is None:
        return None
    pin = Pin.decode(held)
    return _resolve(table, requested, pin) if pin is not None else None
