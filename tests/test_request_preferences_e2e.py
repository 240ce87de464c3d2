"""A request's own ``routing_preferences`` through a real Envoy, from the real
openai and anthropic SDKs: the router chooses among them, the field never
reaches a provider, and a bad one is a 400 in the client's own error shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from ext_proc.config import Config
from ext_proc.router import Turn
from ext_proc.router.service import ConfiguredRouter
from tests.fake_providers import FakeProvider
from tests.gateway import LOOPBACK_LISTENER, Gateway, start_gateway, stop_gateway
from tests.scripted_router import ScriptedRouter, configured

NAMES = ("openai", "anthropic", "mini")

CONFIG = (
    LOOPBACK_LISTENER
    + """\
model_providers:
  - model: openai/gpt-5
    base_url: {openai}
    access_key: sk-openai
  - model: anthropic/claude-sonnet-4-5
    base_url: {anthropic}
    access_key: sk-ant
  - model: openai/gpt-5-mini
    base_url: {mini}
    access_key: sk-mini
    default: true
model_aliases:
  writer: {{target: claude-sonnet-4-5}}
routing_preferences:
  - name: code generation
    description: writing code
    models: [openai/gpt-5]
router:
  model_path: {model_path}
archway:
  admin_port: 0
"""
)

OWN = [
    {"name": "poetry", "description": "writing poems", "models": ["writer"]},
    {"name": "sums", "description": "arithmetic", "models": ["openai/gpt-5"]},
]


def by_word(conversation: tuple[Turn, ...]) -> str:
    text = conversation[-1].content
    if "poem" in text:
        return "poetry"
    if "sum" in text:
        return "sums"
    return "code generation" if "code" in text else "other"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, ScriptedRouter]]:
    providers = {name: FakeProvider(name).start() for name in NAMES}
    tmp = tmp_path_factory.mktemp("own_routes")
    backend = ScriptedRouter(by_word)

    def factory(config: Config) -> ConfiguredRouter:
        return configured(backend)

    try:
        urls = {name: p.base_url for name, p in providers.items()}
        gw = start_gateway(
            CONFIG.format(model_path=tmp, **urls), tmp, providers, router_factory=factory
        )
        try:
            yield gw, backend
        finally:
            stop_gateway(gw)
    finally:
        for p in providers.values():
            p.stop()


@pytest.fixture
def gw(setup: tuple[Gateway, ScriptedRouter]) -> Gateway:
    gateway, backend = setup
    gateway.clear()
    backend.calls.clear()
    backend.routes_seen.clear()
    return gateway


def _openai(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0, timeout=20)


def _anthropic(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)


def _only(gw: Gateway, name: str) -> dict[str, Any]:
    for other in NAMES:
        if other != name:
            assert gw.upstreams[other].requests == [], other
    (request,) = gw.upstreams[name].requests
    return request.json()


def test_openai_client_routes_among_its_own_preferences(
    gw: Gateway, setup: tuple[Gateway, ScriptedRouter]
) -> None:
    raw = _openai(gw).chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "a poem about the sea"}],
        extra_body={"routing_preferences": OWN},
    )
    assert raw.headers["x-archway-route"] == "poetry"
    assert raw.headers["x-archway-model"] == "anthropic/claude-sonnet-4-5"
    assert raw.parse().choices[0].message.content
    sent = _only(gw, "anthropic")
    assert "routing_preferences" not in sent and sent["model"] == "claude-sonnet-4-5"
    (routes,) = setup[1].routes_seen
    assert routes is not None and [r.name for r in routes] == ["poetry", "sums"]


def test_anthropic_client_routes_among_its_own_preferences(gw: Gateway) -> None:
    raw = _anthropic(gw).messages.with_raw_response.create(
        model="auto",
        max_tokens=64,
        messages=[{"role": "user", "content": "what is the sum of 2 and 2"}],
        extra_body={"routing_preferences": OWN},
    )
    assert raw.headers["x-archway-route"] == "sums"
    assert raw.headers["x-archway-model"] == "openai/gpt-5"
    assert raw.parse().content[0].type == "text"
    sent = _only(gw, "openai")
    assert "routing_preferences" not in sent and sent["model"] == "gpt-5"


def test_no_fitting_route_goes_to_the_default(gw: Gateway) -> None:
    # "code" names a configured route, but this request's routes replace them.
    raw = _openai(gw).chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "write code"}],
        extra_body={"routing_preferences": OWN},
    )
    assert raw.headers["x-archway-route"] == "other"
    assert raw.headers["x-archway-model"] == "openai/gpt-5-mini"
    assert "routing_preferences" not in _only(gw, "mini")


def test_an_explicit_model_wins_and_the_field_is_still_stripped(gw: Gateway) -> None:
    _openai(gw).chat.completions.create(
        model="openai/gpt-5",
        messages=[{"role": "user", "content": "a poem"}],
        extra_body={"routing_preferences": OWN},
    )
    sent = _only(gw, "openai")
    assert "routing_preferences" not in sent and sent["model"] == "gpt-5"


def test_a_bad_preference_is_a_400_in_the_openai_shape(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _openai(gw).chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"routing_preferences": [{"name": "x", "description": "d", "models": []}]},
        )
    assert info.value.status_code == 400
    assert info.value.param == "routing_preferences[0].models"
    assert all(not gw.upstreams[n].requests for n in NAMES)


def test_an_unknown_model_is_a_400_in_the_anthropic_shape(gw: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        _anthropic(gw).messages.create(
            model="auto",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={
                "routing_preferences": [
                    {"name": "x", "description": "d", "models": ["mistral/large"]}
                ]
            },
        )
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "routing_preferences[0].models[0]" in body["error"]["message"]
    assert all(not gw.upstreams[n].requests for n in NAMES)
