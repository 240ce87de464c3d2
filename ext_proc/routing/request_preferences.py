"""Routing preferences a request brings itself.

Plano's Arch-Router client could send a top-level ``routing_preferences:
[{name, description, models}]`` in the request body; for that request they
replace the configured routes. ``routing.decide`` reads and checks them here (a
400 in the client's shape on a bad shape or a model the gateway does not serve),
and ``routing.plan`` takes them out of the body: no provider knows the field.

Pure functions over the parsed body and the routing table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ext_proc.config import RoutingPreference
from ext_proc.errors import GatewayError
from ext_proc.router import ROUTE_ERROR, ROUTE_OTHER, ROUTE_TIMEOUT, Route
from ext_proc.routing.body import ParsedBody
from ext_proc.routing.resolve import (
    Resolution,
    RoutingDecision,
    RoutingTable,
    resolve_named,
    resolve_open,
)

__all__ = [
    "FIELD",
    "MAX_ROUTES",
    "read_request_preferences",
    "resolve_request_route",
    "routes_for_router",
    "without_request_preferences",
]

FIELD = "routing_preferences"
MAX_ROUTES = 32
"""More would not fit an Arch-Router prompt's budget and still leave room for
the conversation."""
_MAX_NAME = 100
_MAX_DESCRIPTION = 2000
_RESERVED = frozenset({ROUTE_OTHER, ROUTE_ERROR, ROUTE_TIMEOUT})


def read_request_preferences(
    body: Mapping[str, Any], table: RoutingTable
) -> tuple[RoutingPreference, ...] | None:
    """The request's own routes, each with its models resolved to
    ``provider/model``; ``None`` when the request has none. Raises
    ``GatewayError`` (400) saying what is wrong."""
    if FIELD not in body:
        return None
    raw = body[FIELD]
    if not isinstance(raw, list) or not raw:
        raise _bad(FIELD, "must be a non-empty list of {name, description, models} objects")
    if len(raw) > MAX_ROUTES:
        raise _bad(FIELD, f"has {len(raw)} entries; at most {MAX_ROUTES} are accepted")
    out: list[RoutingPreference] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"{FIELD}[{index}]"
        if not isinstance(item, Mapping):
            raise _bad(where, "must be an object with name, description and models")
        unknown = sorted(set(item) - {"name", "description", "models"})
        if unknown:
            raise _bad(f"{where}.{unknown[0]}", "is not a field of a routing preference")
        name = _text(item, "name", where, _MAX_NAME)
        if name in _RESERVED:
            raise _bad(f"{where}.name", f"{name!r} is reserved for the router's own answers")
        if name in seen:
            raise _bad(f"{where}.name", f"{name!r} is given twice")
        seen.add(name)
        description = _text(item, "description", where, _MAX_DESCRIPTION)
        models = item.get("models")
        if not isinstance(models, list) or not models:
            raise _bad(f"{where}.models", "must be a non-empty list of model names")
        resolved = tuple(
            _model(table, model, f"{where}.models[{n}]") for n, model in enumerate(models)
        )
        out.append(RoutingPreference(name, description, resolved))
    return tuple(out)


def without_request_preferences(parsed: ParsedBody) -> ParsedBody:
    """``parsed`` with the field taken out, marked for re-encoding; as it was
    when it has none."""
    if FIELD not in parsed.fields:  # fields: no decoding of the rest of the body
        return parsed
    data = {key: value for key, value in parsed.data.items() if key != FIELD}
    return ParsedBody(data, None, None, changed=True)


def routes_for_router(preferences: tuple[RoutingPreference, ...]) -> tuple[Route, ...]:
    """The request's routes as the preference router reads them."""
    return tuple(Route(p.name, p.description) for p in preferences)


def resolve_request_route(
    table: RoutingTable,
    requested: str | None,
    route: str | None,
    preferences: tuple[RoutingPreference, ...],
) -> RoutingDecision:
    """Where an open-model request goes when it brought its own routes: the
    chosen route's first model, else (``other``, ``error``, ``timeout``) the
    default model, as with configured routes.

    The route's other models are not a failover chain here: Envoy's failover
    clusters are built from the config, not per request. The first model's own
    configured ``fallbacks`` still apply.
    """
    chosen = next((p for p in preferences if p.name == route), None)
    if chosen is None:
        # The configured routes are not in play: the default, with the reason.
        return resolve_open(table, requested, route if route in _RESERVED else None)
    decision = resolve_named(table, chosen.models[0])
    return dataclasses.replace(
        decision, resolution=Resolution.ROUTER, requested=requested, route=route
    )


def _text(item: Mapping[str, Any], key: str, where: str, limit: int) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{where}.{key}", "must be a non-empty string")
    if len(value) > limit:
        raise _bad(f"{where}.{key}", f"is {len(value)} characters; at most {limit}")
    return value


def _model(table: RoutingTable, model: object, where: str) -> str:
    if not isinstance(model, str) or model.strip().lower() in ("", "auto"):
        raise _bad(where, "must name a configured model or alias")
    try:
        decision = resolve_named(table, model)
    except GatewayError as exc:
        raise GatewayError(400, f"{where}: {exc.message}", code=exc.code, param=where) from None
    return decision.model


def _bad(where: str, problem: str) -> GatewayError:
    return GatewayError(400, f"{where} {problem}.", code="invalid_routing_preferences", param=where)
