"""Failover through a real Envoy: a failing model's request is retried on its
fallbacks, each attempt carrying that model's id, path and credentials."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from ext_proc.config import load_config_text
from ext_proc.deploy.bootstrap import bootstrap_dict
from ext_proc.deploy.envoy_process import validate_bootstrap
from tests.fake_providers import FakeProvider, Reply
from tests.gateway import Gateway, start_gateway, stop_gateway

MESSAGES = [{"role": "user", "content": "Hello!"}]
NAMES = ("primary", "second", "ant", "ant2")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONFIG = """
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 0, timeout: 10s}}
llm_providers:
  - model: openai/gpt-5
    base_url: {primary}
    access_key: sk-primary
    default: true
    fallbacks: [mistral/mistral-large, openai/gpt-5-mini]
  - model: openai/gpt-5-mini
    base_url: {primary}
    access_key: sk-primary
  - model: mistral/mistral-large
    base_url: {second}
    access_key: sk-second
  - model: xai/grok-4
    base_url: http://127.0.0.1:{closed}
    access_key: sk-down
    fallbacks: [mistral/mistral-large]
  - model: anthropic/claude-sonnet-4-5
    base_url: {ant}
    access_key: sk-ant
    fallbacks: [anthropic/claude-haiku-4-5]
  - model: anthropic/claude-haiku-4-5
    base_url: {ant2}
    access_key: sk-ant2
model_aliases:
  fast:
    target: gpt-5-mini
    fallbacks: [mistral/mistral-large]
archway:
  admin_port: 0
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    providers = {name: FakeProvider(name).start() for name in NAMES}
    try:
        urls = {name: p.base_url for name, p in providers.items()}
        text = CONFIG.format(closed=_closed_port(), **urls)
        gw = start_gateway(text, tmp_path_factory.mktemp("failover"), providers)
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


def _chat(gw: Gateway, model: str) -> tuple[int, dict[str, str], dict]:
    req = urllib.request.Request(
        gw.url + "/v1/chat/completions",
        data=json.dumps({"model": model, "messages": MESSAGES}).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer client"},
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_bootstrap_with_fallbacks_is_valid() -> None:
    text = CONFIG.format(
        closed=1,
        primary="http://127.0.0.1:2",
        second="https://api.mistral.ai/v1",
        ant="https://api.anthropic.com",
        ant2="http://127.0.0.1:3",
    )
    config = load_config_text(text)
    data = bootstrap_dict(config)
    clusters = {c["name"]: c for c in data["static_resources"]["clusters"]}
    chain = clusters["failover_openai_127.0.0.1_2__mistral_api.mistral.ai_443__openai_127.0.0.1_2"]
    assert [p["priority"] for p in chain["load_assignment"]["endpoints"]] == [0, 1, 2]
    assert {m["name"] for m in chain["transport_socket_matches"]} == {
        "openai_127.0.0.1_2",
        "mistral_api.mistral.ai_443",
    }
    filters = chain["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]["http_filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.upstream_codec",
    ]
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = [
        r for r in hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] if "route" in r
    ]
    retry = next(r for r in routes if r["route"].get("cluster") == chain["name"])["route"][
        "retry_policy"
    ]
    assert retry["num_retries"] == 2 and retry["retriable_status_codes"] == [429]
    validate_bootstrap(json.dumps(data))


def test_429_moves_to_the_next_model_with_its_credentials(gw: Gateway) -> None:
    primary, second = gw.upstreams["primary"], gw.upstreams["second"]
    _fail(primary, 429)
    status, headers, body = _chat(gw, "openai/gpt-5")
    assert status == 200
    assert headers["x-archway-model"] == "mistral/mistral-large"
    assert headers["x-archway-provider"] == "mistral"
    assert headers["x-archway-fallback"] == "1"
    assert body["model"] == "mistral-large"
    (first,) = primary.requests
    assert first.json()["model"] == "gpt-5"
    assert first.headers["authorization"] == "Bearer sk-primary"
    (retry,) = second.requests
    assert retry.path == "/v1/chat/completions"
    assert retry.json()["model"] == "mistral-large"
    assert retry.json()["messages"] == MESSAGES
    assert retry.headers["authorization"] == "Bearer sk-second"
    assert retry.headers["host"] == second.base_url.removeprefix("http://")


def test_every_fallback_in_order_then_the_last_error(gw: Gateway) -> None:
    primary, second = gw.upstreams["primary"], gw.upstreams["second"]
    _fail(primary, 503)
    _fail(second, 500)
    status, headers, _ = _chat(gw, "openai/gpt-5")
    assert status == 200
    assert headers["x-archway-model"] == "openai/gpt-5-mini"
    assert headers["x-archway-fallback"] == "2"
    assert [r.json()["model"] for r in primary.requests] == ["gpt-5", "gpt-5-mini"]

    gw.clear()
    _fail(primary, 503)
    _fail(second, 502)
    _fail(primary, 429)
    status, _, body = _chat(gw, "openai/gpt-5")
    assert status == 429  # attempts are bounded: the last answer goes back
    assert len(primary.requests) == 2 and len(second.requests) == 1
    assert "error" in body


def test_success_and_client_errors_are_not_retried(gw: Gateway) -> None:
    primary, second = gw.upstreams["primary"], gw.upstreams["second"]
    status, headers, _ = _chat(gw, "openai/gpt-5")
    assert status == 200 and headers["x-archway-model"] == "openai/gpt-5"
    assert "x-archway-fallback" not in headers
    _fail(primary, 400)
    status, _, _ = _chat(gw, "openai/gpt-5")
    assert status == 400
    assert len(primary.requests) == 2 and second.requests == []


def _attempt_streams(gw: Gateway) -> int:
    """Streams the failover clusters' upstream ext_proc filter opened (Envoy's counters)."""
    stats = gw.stats("cluster.failover_")
    return sum(v for name, v in stats.items() if name.endswith(".ext_proc.streams_started"))


def test_only_retries_open_an_attempt_stream(gw: Gateway) -> None:
    """The first attempt goes where the routing filter sent it: Envoy skips the
    upstream filter for it, so only a retry costs an ext_proc stream."""
    before = _attempt_streams(gw)
    status, headers, _ = _chat(gw, "openai/gpt-5")
    assert status == 200 and "x-archway-fallback" not in headers
    assert _attempt_streams(gw) == before
    _fail(gw.upstreams["primary"], 429)
    status, headers, _ = _chat(gw, "openai/gpt-5")
    assert status == 200 and headers["x-archway-fallback"] == "1"
    assert _attempt_streams(gw) == before + 1


def test_connect_failure_moves_on(gw: Gateway) -> None:
    status, headers, _ = _chat(gw, "xai/grok-4")
    assert status == 200
    assert headers["x-archway-model"] == "mistral/mistral-large"
    assert gw.upstreams["second"].requests[0].json()["model"] == "mistral-large"


def test_alias_fallbacks(gw: Gateway) -> None:
    _fail(gw.upstreams["primary"], 500)
    status, headers, _ = _chat(gw, "fast")
    assert status == 200
    assert headers["x-archway-model"] == "mistral/mistral-large"
    assert headers["x-archway-resolution"] == "alias"


def test_translated_requests_fail_over_too(gw: Gateway) -> None:
    ant, ant2 = gw.upstreams["ant"], gw.upstreams["ant2"]
    _fail(ant, 529)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model="anthropic/claude-sonnet-4-5", messages=MESSAGES
    )
    completion = raw.parse()
    assert raw.headers["x-archway-model"] == "anthropic/claude-haiku-4-5"
    assert completion.choices[0].message.content
    (retry,) = ant2.requests
    assert retry.path == "/v1/messages"
    assert retry.json()["model"] == "claude-haiku-4-5"
    assert retry.headers["x-api-key"] == "sk-ant2"

    gw.clear()
    _fail(ant, 503)
    native = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)
    message = native.messages.create(
        model="anthropic/claude-sonnet-4-5", max_tokens=16, messages=MESSAGES
    )
    assert message.model.startswith("claude-haiku-4-5")
    assert ant2.requests[0].json()["model"] == "claude-haiku-4-5"


TIMEOUTS = """
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 0, timeout: 300s}}
llm_providers:
  - model: openai/gpt-5
    base_url: {primary}
    access_key: sk-primary
    default: true
    timeout: 1s
archway:
  admin_port: 0
"""


def test_per_provider_timeout(tmp_path: Path) -> None:
    import threading
    import time

    # An upstream that accepts connections and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        gw = start_gateway(TIMEOUTS.format(primary=url), tmp_path, {})
        try:
            # The client gives up after 20 s: an answer at all shows the provider's
            # 1 s timeout ended the request, not the listener's 300 s.
            start = time.monotonic()
            status, _, body = _chat(gw, "openai/gpt-5")
            assert status == 504, body
            assert body["error"]["code"] == "upstream_timeout"
            # Not before the provider's timeout (load only makes it later).
            assert time.monotonic() - start >= 0.9
        finally:
            stop_gateway(gw)
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        silent.close()
