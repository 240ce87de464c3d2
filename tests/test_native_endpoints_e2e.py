"""``POST /v1/messages/count_tokens`` and ``POST /v1/embeddings`` end to end:
the real anthropic and openai SDKs -> a real Envoy -> Archway -> recording fake
providers. Routed by model and alias, passed through natively; a model whose
provider speaks the other API is a 400 that names the models that can."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.fake_providers import FakeProvider, count_tokens_reply, embedding_of
from tests.gateway import LOOPBACK_LISTENER, Gateway, start_gateway, stop_gateway

NAMES = ("openai", "anthropic", "azure")

CONFIG = (
    LOOPBACK_LISTENER
    + """\
model_providers:
  - model: openai/text-embedding-3-small
    base_url: {openai}
    access_key: sk-openai
    default: true
  - model: openai/gpt-5
    base_url: {openai}
    access_key: sk-openai
    fallbacks: [azure_openai/embed-deploy]
  - model: anthropic/claude-sonnet-4-5
    base_url: {anthropic}
    access_key: sk-ant
  - model: azure_openai/embed-deploy
    base_url: {azure}
    access_key: az-key
model_aliases:
  embedder: {{target: text-embedding-3-small}}
  counter: {{target: claude-sonnet-4-5}}
archway:
  admin_port: 0
"""
)
MESSAGES = [{"role": "user", "content": "How many tokens is this?"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    providers = {name: FakeProvider(name).start() for name in NAMES}
    try:
        urls = {name: p.base_url for name, p in providers.items()}
        gw = start_gateway(CONFIG.format(**urls), tmp_path_factory.mktemp("native"), providers)
        try:
            yield gw
        finally:
            stop_gateway(gw)
    finally:
        for p in providers.values():
            p.stop()


@pytest.fixture
def gw(gateway: Gateway) -> Gateway:
    gateway.clear()
    return gateway


def _openai(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="client", max_retries=0, timeout=20)


def _anthropic(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="client", max_retries=0, timeout=20)


def _only(gw: Gateway, name: str):  # type: ignore[no-untyped-def]
    for other in NAMES:
        if other != name:
            assert gw.upstreams[other].requests == [], other
    (request,) = gw.upstreams[name].requests
    return request


def test_count_tokens_by_alias_reaches_anthropic_natively(gw: Gateway) -> None:
    raw = _anthropic(gw).messages.with_raw_response.count_tokens(
        model="counter", messages=MESSAGES, system="Be brief."
    )
    counted = raw.parse()
    sent = _only(gw, "anthropic")
    assert counted.input_tokens == count_tokens_reply(sent.json())["input_tokens"] > 0
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.headers["x-api-key"] == "sk-ant"
    assert sent.json() == {
        "model": "claude-sonnet-4-5",
        "messages": MESSAGES,
        "system": "Be brief.",
    }
    assert raw.headers["x-archway-model"] == "anthropic/claude-sonnet-4-5"
    assert raw.headers["x-archway-resolution"] == "alias"


def test_embeddings_by_model_and_alias(gw: Gateway) -> None:
    client = _openai(gw)
    # The SDK asks for base64 and decodes it itself.
    result = client.embeddings.create(model="embedder", input=["hello there", "bye"])
    assert [d.embedding for d in result.data] == [embedding_of("hello there"), embedding_of("bye")]
    sent = _only(gw, "openai")
    assert sent.path == "/v1/embeddings"
    assert sent.headers["authorization"] == "Bearer sk-openai"
    assert sent.json()["model"] == "text-embedding-3-small"
    gw.clear()
    floats = client.embeddings.create(
        model="openai/text-embedding-3-small", input="one", encoding_format="float"
    )
    assert floats.data[0].embedding == embedding_of("one")
    assert floats.usage.total_tokens == 1


def test_azure_embeddings_use_the_deployment_path(gw: Gateway) -> None:
    _openai(gw).embeddings.create(model="azure_openai/embed-deploy", input="x")
    sent = _only(gw, "azure")
    assert sent.path.startswith("/openai/deployments/embed-deploy/embeddings?api-version=")
    assert sent.headers["api-key"] == "az-key"


def test_a_model_with_fallbacks_is_sent_to_its_own_upstream_once(gw: Gateway) -> None:
    raw = _openai(gw).embeddings.with_raw_response.create(model="gpt-5", input="x")
    assert raw.headers["x-archway-model"] == "openai/gpt-5"
    assert _only(gw, "openai").path == "/v1/embeddings"


def test_a_provider_of_the_other_api_is_a_400_naming_what_can(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _openai(gw).embeddings.create(model="counter", input="x")
    message = info.value.message
    assert "anthropic/claude-sonnet-4-5 cannot serve POST /v1/embeddings" in message
    assert "openai/text-embedding-3-small, openai/gpt-5, azure_openai/embed-deploy" in message
    with pytest.raises(anthropic.BadRequestError) as refused:
        _anthropic(gw).messages.count_tokens(model="embedder", messages=MESSAGES)
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert "Models that can: anthropic/claude-sonnet-4-5" in body["error"]["message"]
    assert all(not gw.upstreams[n].requests for n in NAMES)
