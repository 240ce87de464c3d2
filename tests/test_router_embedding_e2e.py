"""The embedding router end to end: a client that names no model -> a real Envoy ->
Archway -> the sentence encoder on CTranslate2 -> the upstream of the chosen route.

The tiny encoder has random weights, so the routes are designed for a known
answer: a request that repeats one of a route's examples has cosine 1 to it and
below 0.9 to everything else, and one that repeats a background sentence is
nearer the background than any route."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ext_proc.config import load_config
from ext_proc.router.factory import build_router
from tests.conftest import TinyEncoder
from tests.gateway import (
    LOOPBACK_LISTENER,
    OPENAI_AND_ANTHROPIC,
    Gateway,
    echo_gateway,
)
from tests.test_e2e import only_request, raw_post

CONFIG = (
    LOOPBACK_LISTENER
    + OPENAI_AND_ANTHROPIC
    + """\
routing_preferences:
  - name: code generation
    description: generating new code snippets, functions, or boilerplate
    models: [openai/gpt-5]
    examples: [write python code]
  - name: creative writing
    description: creative content generation, storytelling, and writing assistance
    models: [anthropic/claude-sonnet-4-5]
    examples: [write a story about a dragon at sea]
router:
  backend: embedding
  model_path: {model_path}
  timeout: 20s
  margin: 0.0
  other_examples: [hello there how are you today]
archway:
  admin_port: 0
"""
)


def chat(gw: Gateway, messages: list[dict[str, str]], **extra: object):
    body = {"messages": messages, **extra}
    return raw_post(gw, "/v1/chat/completions", json.dumps(body).encode())


@pytest.fixture(scope="module")
def gateway(
    tiny_encoder: TinyEncoder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("embedding-e2e")
    with echo_gateway(CONFIG, tmp, model_path=tiny_encoder.ct2_dir) as gw:
        yield gw


@pytest.fixture
def gw(gateway: Gateway) -> Gateway:
    gateway.clear()
    return gateway


def test_a_request_without_model_goes_to_the_closest_route(gw: Gateway) -> None:
    status, headers, _ = chat(
        gw, [{"role": "user", "content": "write a story about a dragon at sea"}]
    )
    assert status == 200
    assert headers["x-archway-resolution"] == "router"
    assert headers["x-archway-route"] == "creative writing"
    assert headers["x-archway-model"] == "anthropic/claude-sonnet-4-5"
    assert float(headers["x-archway-route-score"]) == pytest.approx(1.0, abs=1e-3)
    assert only_request(gw, "anthropic").json()["model"] == "claude-sonnet-4-5"


def test_the_latest_user_turn_decides_a_shift(gw: Gateway) -> None:
    messages = [
        {"role": "system", "content": "you are terse"},
        {"role": "user", "content": "write a story about a dragon at sea"},
        {"role": "assistant", "content": "the dragon sailed at night"},
        {"role": "user", "content": "write python code"},
    ]
    status, headers, _ = chat(gw, messages, model="auto")
    assert status == 200
    assert headers["x-archway-route"] == "code generation"
    assert only_request(gw, "openai").json()["model"] == "gpt-5"


def test_small_talk_is_other_and_served_by_the_default(gw: Gateway) -> None:
    status, headers, _ = chat(gw, [{"role": "user", "content": "hello there how are you today"}])
    assert status == 200
    assert headers["x-archway-resolution"] == "default"
    assert headers["x-archway-route"] == "other"
    assert 0.0 < float(headers["x-archway-route-score"]) < 1.0
    assert only_request(gw, "openai").json()["model"] == "gpt-5.2"


def test_an_explicit_model_skips_the_router(gw: Gateway) -> None:
    status, headers, _ = chat(
        gw, [{"role": "user", "content": "write python code"}], model="openai/gpt-5.2"
    )
    assert status == 200 and headers["x-archway-resolution"] == "direct"
    assert "x-archway-route" not in headers and "x-archway-route-score" not in headers


def test_a_client_cannot_forge_the_score(gw: Gateway) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "write python code"}]}).encode()
    status, headers, _ = raw_post(
        gw, "/v1/chat/completions", body, headers={"x-archway-route-score": "9"}
    )
    assert status == 200
    assert float(headers["x-archway-route-score"]) == pytest.approx(1.0, abs=1e-3)
    assert only_request(gw, "openai").headers.get("x-archway-route-score") != "9"


def test_the_documented_config_loads(tiny_encoder: TinyEncoder, tmp_path: Path) -> None:
    page = (Path(__file__).resolve().parents[1] / "docs/preference-routing.md").read_text()
    (snippet,) = [b for b in re.findall(r"```yaml\n(.*?)```", page, re.S) if "embedding" in b]
    providers = """
model_providers:
  - model: openai/gpt-5.2
    access_key: sk-test
    default: true
  - model: anthropic/claude-sonnet-4-5
    access_key: sk-test
"""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "minilm").symlink_to(tiny_encoder.ct2_dir)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(providers + snippet)
    config = load_config(config_path)
    assert config.router is not None and config.router.backend == "embedding"
    assert len(config.routing_preferences[0].examples) == 3
    routed = build_router(config)
    assert routed is not None
    asyncio.run(routed.close())
