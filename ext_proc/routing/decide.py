"""Where a request goes, and why: the one place a routing decision is made.

Two plain steps around the one wait. ``look`` reads what the request already
says: the model asked for, whether it is open (``""``, ``auto`` or none), and a
session's pinned decision. Only when ``Look.asks_router`` is true does the
processor await the preference router; ``decide`` then turns the look and the
router's answer into a ``Decision``.

The await stays out of this module on purpose: the router is I/O (a model on a
worker thread, or an HTTP call) with its own timeout and telemetry at the
processor's edge, and everything here stays synchronous, so ``archway
explain`` and the tests run the very same functions without an event loop.
Session pins are I/O too (a store shared by workers and replicas, see
``routing.affinity``): the processor reads a session's pin into the ``Look``
and claims the pin ``decide`` proposes; nothing here keeps state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ext_proc.config import RoutingPreference
from ext_proc.errors import GatewayError
from ext_proc.headers import AFFINITY_NEW, AFFINITY_PINNED, CLIENT_AFFINITY_HEADER
from ext_proc.router import Route, RouteChoice
from ext_proc.routing import affinity
from ext_proc.routing.body import requested_model
from ext_proc.routing.request_preferences import (
    read_request_preferences,
    resolve_request_route,
    routes_for_router,
)
from ext_proc.routing.resolve import RoutingDecision, RoutingTable, resolve_named, resolve_open

__all__ = [
    "AUTO_MODELS",
    "Decision",
    "Look",
    "decide",
    "is_open_model",
    "look",
    "resolve_model",
]

AUTO_MODELS = frozenset({"", "auto"})
"""Model names that leave the choice to Archway."""


def is_open_model(requested: str | None) -> bool:
    """Whether ``requested`` leaves the model to Archway (router or default)."""
    return requested is None or requested.strip().lower() in AUTO_MODELS


class Look(NamedTuple):
    """What a request says before any router is asked. A named tuple: immutable,
    and built on every request at a third of a frozen dataclass's cost."""

    requested: str | None
    open_model: bool
    session: str | None
    """The session key, for open-model requests that carry one: only those are pinned."""
    pinned: RoutingDecision | None = None
    """The session's pinned decision, resolved against the current table (the
    processor fills it in from the shared store: ``seen._replace(pinned=...)``)."""
    own_routes: tuple[RoutingPreference, ...] | None = None
    """Routes the request brought itself (Plano's per-request
    ``routing_preferences``): for this request they replace the configured ones."""

    @property
    def asks_router(self) -> bool:
        """An open model with no pin: the preference router (when configured) picks."""
        return self.open_model and self.pinned is None

    @property
    def router_routes(self) -> tuple[Route, ...] | None:
        """The routes to ask the router about, when not the configured ones."""
        return None if self.own_routes is None else routes_for_router(self.own_routes)


class Decision(NamedTuple):
    """The outcome of routing one request: plain immutable data for the planner
    and telemetry (a named tuple, as ``Look``)."""

    target: RoutingDecision
    """Model, resolution, route, cluster and fallbacks."""
    score: float | None = None
    """The router's confidence in ``target.route``, when it gave a route and has one."""
    affinity: str | None = None
    """``pinned`` (a session's decision reused), ``new`` (this one is to be pinned:
    the processor claims it for ``Look.session``), or ``None``."""


def look(table: RoutingTable, body: Mapping[str, Any], headers: Mapping[str, str]) -> Look:
    """Read the request's model and, for an open one, its session key (within
    its tenant, when Plano's ``session_cache.tenant_header`` names one)."""
    requested = requested_model(body)
    open_model = is_open_model(requested)
    own_routes = read_request_preferences(body, table)
    session: str | None = None
    # An explicit model or alias is the client's choice, and so are routes the
    # request brings: neither is pinned.
    if open_model and own_routes is None:
        header = headers.get(CLIENT_AFFINITY_HEADER)
        if header is not None:
            tenant_header = table.config.access.tenant_header
            tenant = headers.get(tenant_header) if tenant_header else None
            session = affinity.session_key(header, tenant)
    return Look(requested, open_model, session, None, own_routes)


def decide(table: RoutingTable, seen: Look, choice: RouteChoice | None = None) -> Decision:
    """The decision for a request ``look`` read and, when it asked, the router's
    ``choice``; for a session without a pin, ``new`` (the processor pins it).
    Raises ``GatewayError`` (400) when no configured model serves the request."""
    if seen.pinned is not None:
        return Decision(seen.pinned, affinity=AFFINITY_PINNED)
    if seen.open_model and seen.own_routes is not None:
        if choice is None:
            raise GatewayError(
                400,
                "routing_preferences needs a preference router, and this gateway has "
                "none configured; send a model instead.",
                code="router_not_configured",
                param="routing_preferences",
            )
        target = resolve_request_route(table, seen.requested, choice.route, seen.own_routes)
    elif seen.open_model:
        target = resolve_open(table, seen.requested, choice.route if choice else None)
    else:
        assert seen.requested is not None
        target = resolve_named(table, seen.requested)
    # The score is reported only beside the route it is for.
    score = choice.score if choice is not None and target.route is not None else None
    if seen.session is None:
        return Decision(target, score)
    return Decision(target, score, AFFINITY_NEW)


def resolve_model(
    table: RoutingTable, requested: str | None, *, route: str | None = None
) -> RoutingDecision:
    """Resolve ``requested`` with no session: ``route`` is the router's answer
    for an open model. Raises ``GatewayError`` (400) when nothing serves it."""
    if is_open_model(requested):
        return resolve_open(table, requested, route)
    assert requested is not None
    return resolve_named(table, requested)
