from __future__ import annotations

import pytest

from ext_proc.config import RoutingPreference
from ext_proc.errors import GatewayError
from ext_proc.routing.decide import resolve_model
from ext_proc.routing.resolve import Resolution, build_routing_table
from tests.factories import config, provider


@pytest.fixture
def table():
    return build_routing_table(
        config(
            provider("openai/gpt-5.2", default=True),
            provider("openai/gpt-5"),
            provider("anthropic/claude-sonnet-4-5"),
            provider("mistral/gpt-5"),
            provider("groq/*"),
            aliases={
                "fast-model": "gpt-5.2",
                "creative-model": "claude-sonnet-4-5",
                "strict": "openai/gpt-5",
                "llama": "groq/llama-3.3-70b",
            },
        )
    )


def test_provider_slash_model_goes_to_that_provider(table) -> None:
    d = resolve_model(table, "anthropic/claude-sonnet-4-5")
    assert (d.provider.model, d.model, d.upstream_model) == (
        "anthropic/claude-sonnet-4-5",
        "anthropic/claude-sonnet-4-5",
        "claude-sonnet-4-5",
    )
    assert d.resolution is Resolution.DIRECT
    assert d.upstream.cluster == "anthropic"


def test_bare_id_served_by_exactly_one_model(table) -> None:
    d = resolve_model(table, "claude-sonnet-4-5")
    assert d.model == "anthropic/claude-sonnet-4-5"
    assert d.resolution is Resolution.DIRECT


def test_bare_id_served_by_two_models_is_ambiguous(table) -> None:
    with pytest.raises(GatewayError) as err:
        resolve_model(table, "gpt-5")
    assert err.value.status == 400
    assert err.value.code == "model_ambiguous"
    assert "openai/gpt-5" in err.value.message and "mistral/gpt-5" in err.value.message


def test_alias_resolves_bare_and_qualified_targets(table) -> None:
    fast = resolve_model(table, "fast-model")
    assert (fast.model, fast.resolution, fast.alias) == (
        "openai/gpt-5.2",
        Resolution.ALIAS,
        "fast-model",
    )
    strict = resolve_model(table, "strict")
    assert strict.model == "openai/gpt-5" and strict.upstream_model == "gpt-5"


def test_alias_to_wildcard_model(table) -> None:
    d = resolve_model(table, "llama")
    assert (d.provider.model, d.upstream_model) == ("groq/*", "llama-3.3-70b")


def test_wildcard_serves_any_model_of_its_provider(table) -> None:
    d = resolve_model(table, "groq/llama-3.1-8b-instant")
    assert d.provider.model == "groq/*"
    assert d.model == "groq/llama-3.1-8b-instant"
    assert d.upstream_model == "llama-3.1-8b-instant"
    assert d.upstream.cluster == "groq"


def test_bare_id_falls_to_the_single_wildcard(table) -> None:
    d = resolve_model(table, "mixtral-8x7b")
    assert d.model == "groq/mixtral-8x7b"


@pytest.mark.parametrize("requested", [None, "", "auto", "AUTO", " "])
def test_open_model_goes_to_default(table, requested) -> None:
    d = resolve_model(table, requested)
    assert d.model == "openai/gpt-5.2"
    assert d.resolution is Resolution.DEFAULT
    assert d.route is None


def test_unknown_provider_model_lists_available(table) -> None:
    with pytest.raises(GatewayError) as err:
        resolve_model(table, "anthropic/claude-opus-9")
    assert err.value.status == 400 and err.value.code == "model_not_found"
    assert err.value.param == "model"
    assert "openai/gpt-5.2" in err.value.message and "fast-model" in err.value.message


def test_no_default_and_no_model_is_an_error() -> None:
    table = build_routing_table(config(provider("openai/gpt-5")))
    with pytest.raises(GatewayError) as err:
        resolve_model(table, None)
    assert err.value.code == "model_required"
    assert "openai/gpt-5" in err.value.message


def test_wildcard_default_needs_a_model() -> None:
    table = build_routing_table(config(provider("openai/*", default=True)))
    with pytest.raises(GatewayError) as err:
        resolve_model(table, "")
    assert err.value.code == "model_required"


def test_unknown_bare_model_without_wildcards() -> None:
    table = build_routing_table(config(provider("openai/gpt-5", default=True)))
    with pytest.raises(GatewayError) as err:
        resolve_model(table, "llama3")
    assert err.value.code == "model_not_found"


def test_two_wildcards_make_bare_ids_ambiguous() -> None:
    table = build_routing_table(config(provider("openai/*"), provider("groq/*")))
    with pytest.raises(GatewayError) as err:
        resolve_model(table, "some-model")
    assert err.value.code == "model_ambiguous"
    assert resolve_model(table, "openai/some-model").provider.model == "openai/*"


def test_router_route_picks_the_preference_model() -> None:
    prefs = (
        RoutingPreference("code generation", "write code", ("anthropic/claude-sonnet-4-5",)),
        RoutingPreference("complex reasoning", "think", ("openai/gpt-5", "openai/gpt-5.2")),
    )
    table = build_routing_table(
        config(
            provider("openai/gpt-5.2", default=True),
            provider("openai/gpt-5"),
            provider("anthropic/claude-sonnet-4-5"),
            preferences=prefs,
        )
    )
    d = resolve_model(table, None, route="complex reasoning")
    assert (d.model, d.resolution, d.route) == (
        "openai/gpt-5",
        Resolution.ROUTER,
        "complex reasoning",
    )
    # `other` (or an error) falls back to the default, and says why.
    fallback = resolve_model(table, "auto", route="other")
    assert (fallback.model, fallback.resolution, fallback.route) == (
        "openai/gpt-5.2",
        Resolution.DEFAULT,
        "other",
    )
    # An explicit model never uses the route.
    explicit = resolve_model(table, "openai/gpt-5.2", route="complex reasoning")
    assert explicit.resolution is Resolution.DIRECT and explicit.route is None


def test_decision_is_frozen(table) -> None:
    d = resolve_model(table, "fast-model")
    with pytest.raises(AttributeError):
        d.model = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "model", ["groq/a b", "groq/x\r\nevil: 1", "groq/\ud800", "groq/" + "x" * 300, "é"]
)
def test_wildcard_model_ids_must_be_header_safe(table, model) -> None:
    with pytest.raises(GatewayError) as err:
        resolve_model(table, model)
    assert err.value.code == "invalid_model"
