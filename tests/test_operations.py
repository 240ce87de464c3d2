"""Operations through a real Envoy: the counters a scrape shows, the access log's
fields, session affinity and the trace a routed request leaves."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ext_proc.config import Config
from ext_proc.router.service import ConfiguredRouter
from ext_proc.telemetry import tracing
from ext_proc.telemetry.metrics import MetricsEndpoint, start_metrics_endpoint
from tests.fake_providers import FakeProvider, Reply
from tests.gateway import (
    LOOPBACK_LISTENER,
    OPENAI_AND_ANTHROPIC,
    Gateway,
    echo_gateway,
    start_gateway,
    stop_gateway,
)
from tests.metrics_scrape import delta, requests_key, sample_key, scrape
from tests.scripted_router import ScriptedRouter, configured
from tests.test_e2e import raw_post

NAMES = ("openai", "mistral", "anthropic")
SECRETS = ("sk-openai-OPSSECRET", "sk-mistral-OPSSECRET", "sk-ant-OPSSECRET")

CONFIG = """
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 0, timeout: 10s}}
llm_providers:
  - model: openai/gpt-5
    base_url: {openai}
    access_key: sk-openai-OPSSECRET
    default: true
    fallbacks: [mistral/mistral-large]
  - model: mistral/mistral-large
    base_url: {mistral}
    access_key: sk-mistral-OPSSECRET
  - model: anthropic/claude-sonnet-4-5
    base_url: {anthropic}
    access_key: sk-ant-OPSSECRET
model_aliases:
  fast: {{target: mistral-large}}
routing:
  session_ttl_seconds: 60
archway:
  admin_port: 0
  metrics_port: 0
  tracing: {{collector: "127.0.0.1:{collector}"}}
"""

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Ops:
    def __init__(
        self,
        gateway: Gateway,
        endpoint: MetricsEndpoint,
        spans: InMemorySpanExporter,
        envoy_log: Path,
    ) -> None:
        self.gateway = gateway
        self.endpoint = endpoint
        self.spans = spans
        self.envoy_log = envoy_log

    def chat(
        self,
        model: str | None,
        *,
        headers: dict[str, str] | None = None,
        path: str = "/v1/chat/completions",
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        payload: dict[str, Any] = {"messages": [{"role": "user", "content": "Hello!"}]}
        if path == "/v1/messages":
            payload["max_tokens"] = 16
        if model is not None:
            payload["model"] = model
        req = urllib.request.Request(
            self.gateway.url + path,
            data=json.dumps(payload).encode(),
            headers={"content-type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, json.load(err)

    def access_log(self, field: str, value: str) -> dict[str, Any]:
        """The last access log line whose ``field`` is ``value``. Envoy writes it
        after the response, and replaces a client's x-request-id with its own."""
        # Envoy flushes its log file every 10 s.
        deadline = time.monotonic() + 15
        while True:
            lines = [line for line in self.envoy_log.read_text().splitlines() if line[:1] == "{"]
            found = [entry for entry in map(json.loads, lines) if entry.get(field) == value]
            if found:
                return found[-1]
            assert time.monotonic() < deadline, f"no access log line with {field}={value!r}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install_tracer_provider(provider)
    providers = {name: FakeProvider(name).start() for name in NAMES}
    tmp = tmp_path_factory.mktemp("operations")
    endpoint = start_metrics_endpoint("127.0.0.1", 0)
    try:
        text = CONFIG.format(
            collector=_closed_port(), **{n: p.base_url for n, p in providers.items()}
        )
        gateway = start_gateway(text, tmp, providers, envoy_log=tmp / "envoy.log")
        try:
            yield Ops(gateway, endpoint, exporter, tmp / "envoy.log")
        finally:
            stop_gateway(gateway)
    finally:
        endpoint.stop()
        for p in providers.values():
            p.stop()
        tracing.install_tracer_provider(None)


def test_counters_move_with_requests_through_envoy(ops: Ops) -> None:
    before = scrape(ops.endpoint.url)
    assert ops.chat("mistral/mistral-large")[0] == 200
    assert ops.chat("fast")[0] == 200
    assert ops.chat(None)[0] == 200
    assert ops.chat("anthropic/claude-sonnet-4-5")[0] == 200
    assert ops.chat("openai/gpt-5", path="/v1/messages")[0] == 200
    assert ops.chat("nope/nothing")[0] == 400
    after = scrape(ops.endpoint.url)
    assert delta(before, after, requests_key("direct", "mistral", "mistral/mistral-large")) == 1
    assert delta(before, after, requests_key("alias", "mistral", "mistral/mistral-large")) == 1
    assert delta(before, after, requests_key("default", "openai", "openai/gpt-5")) == 1
    assert delta(before, after, requests_key("direct", "openai", "openai/gpt-5")) == 1
    assert delta(before, after, requests_key("", "", "", "model_not_found")) == 1
    assert delta(before, after, sample_key("archway_errors_total", code="model_not_found")) == 1
    pairs = ("openai-to-anthropic", "anthropic-to-openai")
    for pair in pairs:
        assert delta(before, after, sample_key("archway_translations_total", pair=pair)) == 1
    assert not any(secret in str(after) for secret in SECRETS)


def test_a_fallback_is_counted_and_logged(ops: Ops) -> None:
    ops.gateway.clear()
    body = json.dumps({"error": {"message": "overloaded", "type": "x"}}).encode()
    ops.gateway.upstreams["openai"].queue(Reply(status=503, body=body))  # type: ignore[attr-defined]
    before = scrape(ops.endpoint.url)
    status, headers, _ = ops.chat("openai/gpt-5")
    after = scrape(ops.endpoint.url)
    assert status == 200 and headers["x-archway-fallback"] == "1"
    key = sample_key(
        "archway_fallbacks_total", failed_model="openai/gpt-5", model="mistral/mistral-large"
    )
    assert delta(before, after, key) == 1


def test_affinity_pins_an_open_model_conversation(ops: Ops) -> None:
    before = scrape(ops.endpoint.url)
    session = {"x-model-affinity": "conversation-42"}
    first = ops.chat(None, headers=session)
    second = ops.chat("auto", headers=session)
    explicit = ops.chat("fast", headers=session)
    after = scrape(ops.endpoint.url)
    assert first[1]["x-archway-affinity"] == "new"
    assert second[1]["x-archway-affinity"] == "pinned"
    assert second[1]["x-archway-model"] == first[1]["x-archway-model"] == "openai/gpt-5"
    assert second[1]["x-archway-resolution"] == "default"
    # The client chose this one: never pinned, and nothing says it was.
    assert "x-archway-affinity" not in explicit[1]
    assert explicit[1]["x-archway-model"] == "mistral/mistral-large"
    assert delta(before, after, sample_key("archway_affinity_total", result="new")) == 1
    assert delta(before, after, sample_key("archway_affinity_total", result="pinned")) == 1
    # A client cannot fake the answer.
    forged = ops.chat("fast", headers={"x-archway-affinity": "pinned"})
    assert "x-archway-affinity" not in forged[1]


def test_a_routed_request_leaves_a_span_in_the_clients_trace(ops: Ops) -> None:
    ops.spans.clear()
    traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
    status, _, _ = ops.chat(
        "anthropic/claude-sonnet-4-5",
        headers={"traceparent": traceparent, "authorization": "Bearer client-OPSSECRET"},
    )
    assert status == 200
    (span,) = [s for s in ops.spans.get_finished_spans() if s.name == tracing.REQUEST_SPAN]
    assert f"{span.context.trace_id:032x}" == CLIENT_TRACE_ID
    # Its parent is Envoy's span for the ext_proc call, itself in the client's trace.
    assert span.parent is not None and span.parent.is_remote
    assert f"{span.parent.trace_id:032x}" == CLIENT_TRACE_ID
    assert f"{span.parent.span_id:016x}" != CLIENT_SPAN_ID
    attributes = dict(span.attributes or {})
    assert attributes["archway.model"] == "anthropic/claude-sonnet-4-5"
    assert attributes["archway.provider"] == "anthropic"
    assert attributes["archway.resolution"] == "direct"
    assert attributes["archway.translation"] == "openai-to-anthropic"
    assert attributes["archway.cluster"].startswith("anthropic_")
    assert not any("OPSSECRET" in str(value) for value in attributes.values())


def test_a_fallback_attempt_leaves_a_span_too(ops: Ops) -> None:
    ops.spans.clear()
    body = json.dumps({"error": {"message": "overloaded", "type": "x"}}).encode()
    ops.gateway.upstreams["openai"].queue(Reply(status=500, body=body))  # type: ignore[attr-defined]
    traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
    status, _, _ = ops.chat("openai/gpt-5", headers={"traceparent": traceparent})
    assert status == 200
    (attempt,) = [s for s in ops.spans.get_finished_spans() if s.name == tracing.FALLBACK_SPAN]
    assert f"{attempt.context.trace_id:032x}" == CLIENT_TRACE_ID
    attributes = dict(attempt.attributes or {})
    assert attributes["archway.model"] == "mistral/mistral-large"
    assert attributes["archway.failed_model"] == "openai/gpt-5"
    assert attributes["archway.attempt"] == 2


def test_the_access_log_names_every_decision_field(ops: Ops) -> None:
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
    status, _, _ = ops.chat(
        "anthropic/claude-sonnet-4-5",
        headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN_ID}-01"},
    )
    assert status == 200
    entry = ops.access_log("trace_id", trace_id)
    assert entry["model"] == "anthropic/claude-sonnet-4-5"
    assert entry["provider"] == "anthropic"
    assert entry["resolution"] == "direct"
    assert entry["translation"] == "openai-to-anthropic"
    assert entry["upstream_path"] == "/v1/messages" and entry["path"] == "/v1/chat/completions"
    assert entry["upstream_host"].startswith("127.0.0.1:")
    assert entry["response_flags"] == "-" and entry["response_code_details"] == "via_upstream"
    assert isinstance(entry["duration_ms"], int)
    assert entry["fallback"] is None and entry["answered_model"] == "anthropic/claude-sonnet-4-5"
    assert entry["request_id"]
    assert not any(secret in ops.envoy_log.read_text() for secret in SECRETS)


def test_the_access_log_records_a_fallback_and_a_pinned_conversation(ops: Ops) -> None:
    # Each line is found by a trace id only this test sends: other tests' lines
    # in the same file neither help nor hurt.
    fallback_trace = "6bf92f3577b34da6a3ce929d0e0e4738"
    pinned_trace = "7bf92f3577b34da6a3ce929d0e0e4739"
    body = json.dumps({"error": {"message": "overloaded", "type": "x"}}).encode()
    ops.gateway.upstreams["openai"].queue(Reply(status=503, body=body))  # type: ignore[attr-defined]
    traced = {"traceparent": f"00-{fallback_trace}-{CLIENT_SPAN_ID}-01"}
    assert ops.chat("openai/gpt-5", headers=traced)[0] == 200
    session = {"x-model-affinity": "access-log-conversation"}
    assert ops.chat(None, headers=session)[0] == 200
    traced = {**session, "traceparent": f"00-{pinned_trace}-{CLIENT_SPAN_ID}-01"}
    assert ops.chat(None, headers=traced)[0] == 200

    fallback = ops.access_log("trace_id", fallback_trace)
    assert fallback["fallback"] == "1"
    assert fallback["model"] == "openai/gpt-5"  # the first choice, as routed
    assert fallback["answered_model"] == "mistral/mistral-large"
    assert fallback["response_code"] == 200
    assert fallback["upstream_cluster"].startswith("failover_")
    assert fallback["route_score"] is None and fallback["affinity"] is None
    pinned = ops.access_log("trace_id", pinned_trace)
    assert pinned["affinity"] == "pinned"
    assert pinned["resolution"] == "default" and pinned["model"] == "openai/gpt-5"


# --- the router's time inside Envoy's ---------------------------------------------

SLOW_ROUTER_CONFIG = (
    LOOPBACK_LISTENER
    + OPENAI_AND_ANTHROPIC
    + """\
routing_preferences:
  - name: code generation
    description: generating new code
    models: [openai/gpt-5]
router:
  model_path: {model_path}
  timeout: 400ms
archway:
  admin_port: 0
  message_timeout: 200ms
"""
)


def test_a_router_slower_than_envoys_message_timeout_still_ends_in_the_default(
    tmp_path: Path,
) -> None:
    # Envoy is told to wait 200 ms per message; the router may take 400 ms and
    # this one takes longer. The client must get the default model (the router's
    # timeout), not Envoy's 504 for an ext_proc server that did not answer.
    backend = ScriptedRouter(lambda _: "code generation", delay_s=2.0)

    def factory(config: Config) -> ConfiguredRouter:
        assert config.router is not None
        return configured(backend, timeout_s=config.router.timeout_s)

    with echo_gateway(
        SLOW_ROUTER_CONFIG, tmp_path, router_factory=factory, model_path=tmp_path
    ) as gw:
        body = json.dumps({"messages": [{"role": "user", "content": "write code"}]})
        status, headers, _ = raw_post(gw, "/v1/chat/completions", body.encode())
    assert backend.calls, "the router was asked"
    assert status == 200
    assert headers["x-archway-resolution"] == "default"
    assert headers["x-archway-route"] == "timeout"
