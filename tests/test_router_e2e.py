"""Preference routing end to end: a client that names no model -> a real Envoy ->
Archway -> the preference router -> the upstream of the chosen route."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ext_proc.config import Config
from ext_proc.router.service import ConfiguredRouter
from tests.conftest import TinyModel
from tests.gateway import (
    LOOPBACK_LISTENER,
    OPENAI_AND_ANTHROPIC,
    Gateway,
    echo_gateway,
)
from tests.scripted_router import ScriptedRouter, by_keyword, configured
from tests.test_e2e import only_request, raw_post
from tests.tiny_qwen import EXAMPLE

CONFIG = (
    LOOPBACK_LISTENER
    + OPENAI_AND_ANTHROPIC
    + """\
routing_preferences:
  - name: code generation
    description: generating new code snippets, functions, or boilerplate
    models: [openai/gpt-5]
  - name: creative writing
    description: creative content generation, storytelling, and writing assistance
    models: [anthropic/claude-sonnet-4-5]
router:
  model_path: {model_path}
  timeout: {timeout}
archway:
  admin_port: 0
"""
)


def chat(gw: Gateway, text: str, **extra: object) -> tuple[int, dict[str, str], bytes]:
    body = {"messages": [{"role": "user", "content": text}], **extra}
    return raw_post(gw, "/v1/chat/completions", json.dumps(body).encode())


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, ScriptedRouter]]:
    backend = ScriptedRouter(by_keyword)
    tmp = tmp_path_factory.mktemp("scripted")

    def factory(config: Config) -> ConfiguredRouter:
        assert config.router is not None and config.router.timeout_s == 0.5
        return configured(backend, timeout_s=config.router.timeout_s)

    with echo_gateway(CONFIG, tmp, router_factory=factory, model_path=tmp, timeout="500ms") as gw:
        yield gw, backend
    assert backend.closed, "the server closes the router it owns"


@pytest.fixture
def sgw(scripted: tuple[Gateway, ScriptedRouter]) -> tuple[Gateway, ScriptedRouter]:
    gw, backend = scripted
    gw.clear()
    backend.calls.clear()
    backend.delay_s = 0.0
    return gw, backend


def test_request_without_model_goes_to_the_routes_model(sgw) -> None:
    gw, backend = sgw
    status, headers, _ = chat(gw, "tell me a story about robots")
    assert backend.calls[0][-1].content == "tell me a story about robots"
    assert status == 200
    assert headers["x-archway-resolution"] == "router"
    assert headers["x-archway-route"] == "creative writing"
    assert headers["x-archway-model"] == "anthropic/claude-sonnet-4-5"
    assert only_request(gw, "anthropic").json()["model"] == "claude-sonnet-4-5"
    status, headers, _ = chat(gw, "write code", model="auto")
    assert headers["x-archway-route"] == "code generation"
    assert gw.upstreams["openai"].requests[-1].json()["model"] == "gpt-5"


@pytest.mark.parametrize(("text", "route"), [("hello there", "other"), ("boom", "error")])
def test_routing_trouble_is_served_by_the_default(sgw, text: str, route: str) -> None:
    gw, _ = sgw
    status, headers, _ = chat(gw, text)
    assert status == 200
    assert headers["x-archway-resolution"] == "default"
    assert headers["x-archway-route"] == route
    assert only_request(gw, "openai").json()["model"] == "gpt-5.2"


def test_a_slow_router_times_out_and_the_request_still_succeeds(sgw) -> None:
    gw, backend = sgw
    backend.delay_s = 3.0
    status, headers, _ = chat(gw, "write code")
    assert status == 200
    assert headers["x-archway-resolution"] == "default"
    assert headers["x-archway-route"] == "timeout"


def test_explicit_model_never_asks_the_router(sgw) -> None:
    gw, backend = sgw
    status, headers, _ = chat(gw, "tell me a story", model="openai/gpt-5.2")
    assert status == 200 and headers["x-archway-resolution"] == "direct"
    assert "x-archway-route" not in headers
    assert backend.calls == []


def test_the_real_ctranslate2_router_routes_end_to_end(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    with echo_gateway(CONFIG, tmp_path, model_path=tiny_model.ct2_dir, timeout="20s") as gw:
        body = {"messages": EXAMPLE["conversation"]}
        status, headers, _ = raw_post(gw, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 200
    # The tiny model was trained to answer {"route": "creative writing"}.
    assert headers["x-archway-resolution"] == "router"
    assert headers["x-archway-route"] == "creative writing"
    (request,) = gw.upstreams["anthropic"].requests
    assert request.json()["model"] == "claude-sonnet-4-5"
