"""Plano's retry semantics through a real Envoy: a route's ``models`` after the
first are its failover chain, and a listener's ``max_retries`` retries a model."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from ext_proc.config import Config, load_config_text
from ext_proc.deploy.bootstrap import bootstrap_dict
from ext_proc.router.service import ConfiguredRouter
from ext_proc.routing.decide import resolve_model
from ext_proc.routing.resolve import build_routing_table
from tests.fake_providers import FakeProvider, Reply
from tests.gateway import Gateway, start_gateway, stop_gateway
from tests.scripted_router import ScriptedRouter, by_keyword, configured

NAMES = ("first", "second", "steady")

CONFIG = """
version: v0.4.0
listeners:
  - type: model
    name: llm_in
    address: 127.0.0.1
    port: 0
    timeout: 10s
    max_retries: 2
model_providers:
  - model: openai/gpt-5
    base_url: {first}
    access_key: sk-first
  - model: mistral/mistral-large
    base_url: {second}
    access_key: sk-second
  - model: openai/gpt-5-mini
    base_url: {steady}
    access_key: sk-steady
    default: true
routing_preferences:
  - name: code generation
    description: writing code
    models: [openai/gpt-5, mistral/mistral-large]
  - name: creative writing
    description: stories
    models: [openai/gpt-5-mini]
router:
  model_path: {model_path}
archway:
  admin_port: 0
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    providers = {name: FakeProvider(name).start() for name in NAMES}
    tmp = tmp_path_factory.mktemp("plano_failover")
    backend = ScriptedRouter(by_keyword)

    def factory(config: Config) -> ConfiguredRouter:
        return configured(backend)

    try:
        text = CONFIG.format(model_path=tmp, **{n: p.base_url for n, p in providers.items()})
        gw = start_gateway(text, tmp, providers, router_factory=factory)
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


def _fail(provider: FakeProvider, status: int) -> None:
    body = json.dumps({"error": {"message": f"scripted {status}", "type": "x"}}).encode()
    provider.queue(Reply(status=status, body=body))


def _chat(gw: Gateway, text: str, model: str | None = None) -> tuple[int, dict[str, str]]:
    body: dict[str, object] = {"messages": [{"role": "user", "content": text}]}
    if model is not None:
        body["model"] = model
    req = urllib.request.Request(
        gw.url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        err.read()
        return err.code, dict(err.headers)


def test_a_routes_second_model_answers_when_its_first_fails(gw: Gateway) -> None:
    _fail(gw.upstreams["first"], 429)
    status, headers = _chat(gw, "write code for me")
    assert status == 200
    assert headers["x-archway-route"] == "code generation"
    assert headers["x-archway-model"] == "mistral/mistral-large"
    (sent,) = gw.upstreams["second"].requests
    assert sent.json()["model"] == "mistral-large"
    assert sent.headers["authorization"] == "Bearer sk-second"


def test_max_retries_retries_the_same_model(gw: Gateway) -> None:
    steady = gw.upstreams["steady"]
    _fail(steady, 503)
    _fail(steady, 500)
    status, headers = _chat(gw, "hello", model="openai/gpt-5-mini")
    assert status == 200
    assert len(steady.requests) == 3
    assert headers["x-archway-model"] == "openai/gpt-5-mini"


def test_max_retries_is_a_limit(gw: Gateway) -> None:
    steady = gw.upstreams["steady"]
    for _ in range(3):
        _fail(steady, 500)
    status, _ = _chat(gw, "hello", model="openai/gpt-5-mini")
    assert status == 500
    assert len(steady.requests) == 3


def test_route_decision_and_bootstrap_carry_the_chain() -> None:
    text = CONFIG.format(
        first="http://127.0.0.1:2",
        second="http://127.0.0.1:3",
        steady="http://127.0.0.1:4",
        model_path="/tmp",
    )
    config = load_config_text(text)
    decision = resolve_model(build_routing_table(config), None, route="code generation")
    assert decision.fallbacks == ("mistral/mistral-large",)
    assert decision.cluster.startswith("failover_")
    data = bootstrap_dict(config)
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = [
        r for r in hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] if "route" in r
    ]
    failover = next(r for r in routes if r["route"].get("cluster") == decision.cluster)
    # The chain has two levels, and max_retries asks for two retries.
    assert failover["route"]["retry_policy"]["num_retries"] == 2
    default = routes[-1]["route"]
    assert default["retry_policy"]["num_retries"] == 2
    assert default["retry_policy"]["retriable_status_codes"] == [429]
