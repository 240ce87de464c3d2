"""Routing preferences a request brings itself (Plano's Arch-Router client):
read, checked, taken out of the body, and resolved."""

from __future__ import annotations

from typing import Any

import pytest

from ext_proc.config import RoutingPreference
from ext_proc.errors import GatewayError
from ext_proc.router import Route
from ext_proc.routing.body import ParsedBody, with_model
from ext_proc.routing.request_preferences import (
    read_request_preferences,
    resolve_request_route,
    routes_for_router,
    without_request_preferences,
)
from ext_proc.routing.resolve import Resolution, build_routing_table
from tests.factories import config, provider

TABLE = build_routing_table(
    config(
        provider("openai/gpt-5", default=True),
        provider("anthropic/claude-sonnet-4-5", fallbacks=()),
        provider("groq/*"),
        aliases={"fast": "openai/gpt-5"},
    )
)
GOOD = [
    {"name": "code", "description": "writing code", "models": ["claude-sonnet-4-5"]},
    {"name": "chat", "description": "small talk", "models": ["fast", "groq/llama-3"]},
]


def test_read_resolved_and_removed_from_the_body() -> None:
    body: dict[str, Any] = {"model": "auto", "messages": [], "routing_preferences": GOOD}
    found = read_request_preferences(body, TABLE)
    assert found == (
        RoutingPreference("code", "writing code", ("anthropic/claude-sonnet-4-5",)),
        RoutingPreference("chat", "small talk", ("openai/gpt-5", "groq/llama-3")),
    )
    stripped = without_request_preferences(ParsedBody(body, '{"model": "auto"}', (10, 16)))
    assert stripped.data == {"model": "auto", "messages": []}
    assert stripped.changed and stripped.model_span is None
    assert with_model(stripped, "auto") == b'{"model":"auto","messages":[]}'
    assert routes_for_router(found) == (
        Route("code", "writing code"),
        Route("chat", "small talk"),
    )


def test_absent_is_none_and_the_body_is_untouched() -> None:
    body = {"messages": []}
    assert read_request_preferences(body, TABLE) is None
    parsed = ParsedBody(body, None, None)
    assert without_request_preferences(parsed) is parsed


@pytest.mark.parametrize(
    ("value", "param", "words"),
    [
        ([], "routing_preferences", "non-empty list"),
        ({"name": "x"}, "routing_preferences", "non-empty list"),
        (["code"], "routing_preferences[0]", "must be an object"),
        ([{"name": "x", "description": "d"}], "routing_preferences[0].models", "non-empty list"),
        ([{"name": "", "description": "d", "models": ["fast"]}], "routing_preferences[0].name", ""),
        ([{"name": "x", "models": ["fast"]}], "routing_preferences[0].description", "string"),
        (
            [{"name": "other", "description": "d", "models": ["fast"]}],
            "routing_preferences[0].name",
            "reserved",
        ),
        (
            [{"name": "x", "description": "d", "models": ["fast"], "examples": []}],
            "routing_preferences[0].examples",
            "not a field",
        ),
        (
            [GOOD[0], {**GOOD[0], "models": ["fast"]}],
            "routing_preferences[1].name",
            "given twice",
        ),
        (
            [{"name": "x", "description": "d", "models": ["mistral/large"]}],
            "routing_preferences[0].models[0]",
            "not configured",
        ),
        (
            [{"name": "x", "description": "d", "models": ["auto"]}],
            "routing_preferences[0].models[0]",
            "configured model",
        ),
        (
            [{"name": f"r{n}", "description": "d", "models": ["fast"]} for n in range(33)],
            "routing_preferences",
            "at most 32",
        ),
    ],
)
def test_bad_shapes_and_unknown_models_are_a_400(value: object, param: str, words: str) -> None:
    with pytest.raises(GatewayError) as info:
        read_request_preferences({"routing_preferences": value}, TABLE)
    assert info.value.status == 400
    assert info.value.param == param
    assert words in info.value.message


def test_the_chosen_route_goes_to_its_first_model() -> None:
    prefs = read_request_preferences({"routing_preferences": GOOD}, TABLE)
    assert prefs is not None
    decision = resolve_request_route(TABLE, None, "chat", prefs)
    assert (decision.model, decision.resolution, decision.route) == (
        "openai/gpt-5",
        Resolution.ROUTER,
        "chat",
    )
    other = resolve_request_route(TABLE, "auto", "other", prefs)
    assert (other.model, other.resolution, other.route) == (
        "openai/gpt-5",
        Resolution.DEFAULT,
        "other",
    )


def test_decide_takes_the_requests_routes_and_needs_a_router_for_them() -> None:
    from ext_proc.router import RouteChoice
    from ext_proc.routing.decide import decide, look

    body = {"model": "auto", "messages": [], "routing_preferences": GOOD}
    headers = {"x-model-affinity": "s1"}
    seen = look(TABLE, body, headers)
    assert seen.asks_router and seen.session is None  # a request's own routes are not pinned
    assert [r.name for r in seen.router_routes or ()] == ["code", "chat"]
    decision = decide(TABLE, seen, RouteChoice("code"))
    assert decision.target.model == "anthropic/claude-sonnet-4-5"
    with pytest.raises(GatewayError) as info:
        decide(TABLE, seen, None)
    assert info.value.code == "router_not_configured"
    # An explicit model needs no router; the routes are still checked.
    named = look(TABLE, {**body, "model": "fast"}, {})
    assert decide(TABLE, named, None).target.model == "openai/gpt-5"
