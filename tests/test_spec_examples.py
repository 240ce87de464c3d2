"""The spec's examples (llm_routing.rst), loaded from examples/ and resolved as
its client snippets ask."""

from __future__ import annotations

from pathlib import Path

import pytest

from ext_proc.config import load_config
from ext_proc.errors import GatewayError
from ext_proc.routing.decide import resolve_model
from ext_proc.routing.resolve import Resolution, RoutingTable, build_routing_table

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENV = {
    "OPENAI_API_KEY": "sk-o",
    "ANTHROPIC_API_KEY": "sk-a",
    "MYCORP_API_KEY": "sk-m",
    "OPENROUTER_API_KEY": "sk-r",
}


def table(name: str) -> RoutingTable:
    return build_routing_table(load_config(EXAMPLES / name, environ=ENV))


def test_model_based_routing() -> None:
    t = table("model_routing.yaml")
    assert resolve_model(t, "openai/gpt-5.2").upstream.cluster == "openai"
    claude = resolve_model(t, "anthropic/claude-sonnet-4-5")
    assert (claude.upstream.cluster, claude.upstream_model) == ("anthropic", "claude-sonnet-4-5")
    assert resolve_model(t, None).model == "openai/gpt-5.2"


def test_alias_based_routing() -> None:
    t = table("alias_routing.yaml")
    expected = {
        "fast-model": "openai/gpt-5.2",
        "reasoning-model": "openai/gpt-5",
        "creative-model": "anthropic/claude-sonnet-4-5",
    }
    for alias, model in expected.items():
        d = resolve_model(t, alias)
        assert (d.model, d.resolution) == (model, Resolution.ALIAS)
    # That example declares no default, so an open model has nowhere to go.
    with pytest.raises(GatewayError) as err:
        resolve_model(t, None)
    assert err.value.code == "model_required"


def test_preference_aligned_routing_config() -> None:
    t = table("preference_routing.yaml")
    assert t.routes == {
        "code understanding": "openai/gpt-5",
        "complex reasoning": "openai/gpt-5",
        "creative writing": "anthropic/claude-sonnet-4-5",
        "code generation": "anthropic/claude-sonnet-4-5",
    }
    story = resolve_model(t, None, route="creative writing")
    assert (story.model, story.resolution) == ("anthropic/claude-sonnet-4-5", Resolution.ROUTER)
    assert resolve_model(t, None).resolution is Resolution.DEFAULT


def test_hybrid_routing() -> None:
    t = table("config.yaml")
    assert resolve_model(t, "fast-model").model == "openai/gpt-5.2"
    assert resolve_model(t, "reasoning-model").model == "openai/gpt-5"
    assert resolve_model(t, "creative-model").model == "anthropic/claude-sonnet-4-5"
    assert resolve_model(t, None, route="creative_tasks").model == "anthropic/claude-sonnet-4-5"
    assert resolve_model(t, None).model == "openai/gpt-5.2"


def test_plano_current_format() -> None:
    t = table("plano_current.yaml")
    assert t.routes["code generation"] == "anthropic/claude-sonnet-4-5"
    custom = resolve_model(t, "mycorp/llama-3.3-70b-instruct")
    assert custom.upstream.host == "llm.mycorp.example"
    routed = resolve_model(t, "openrouter/meta-llama/llama-3.1-8b-instruct")
    assert routed.upstream_model == "meta-llama/llama-3.1-8b-instruct"
    assert routed.upstream.cluster == "openrouter"
