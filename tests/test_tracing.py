"""OpenTelemetry tracing: the switch, the request span and its router child, and
Envoy's side of it in the bootstrap. Spans are read from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ext_proc.config import load_config_text
from ext_proc.deploy.bootstrap import OTEL_COLLECTOR_CLUSTER, bootstrap_dict, render_bootstrap
from ext_proc.deploy.envoy_process import validate_bootstrap
from ext_proc.router import RouteChoice
from ext_proc.routing.resolve import build_routing_table
from ext_proc.server.routing_stream import RoutingProcessor
from ext_proc.telemetry import tracing
from ext_proc.telemetry.observe import RequestTelemetry
from tests.factories import config, provider
from tests.metrics_worker import chat_messages

TABLE = build_routing_table(
    config(
        provider("openai/gpt-5.2", default=True, access_key="sk-trace-SECRET"),
        provider("anthropic/claude-sonnet-4-5"),
    )
)
CLIENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ENVOY = "00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.install_tracer_provider(None)


def _route(
    model: str | None,
    *,
    traceparent: str | None = None,
    trace_context: dict[str, str] | None = None,
) -> None:
    async def drive() -> None:
        processor = RoutingProcessor(TABLE, trace_context=trace_context)
        messages = chat_messages(model)
        if traceparent is not None:
            header = messages[0].request_headers.headers.headers.add()
            header.key, header.raw_value = "traceparent", traceparent.encode()
        for message in messages:
            response = await processor.handle(message)
            if response.WhichOneof("response") == "immediate_response":
                return

    asyncio.run(drive())


def _only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


def test_tracing_is_off_by_default() -> None:
    assert tracing.configure_tracing(None, {}) is None
    assert tracing.tracer() is None
    assert tracing.stream_trace_context([("traceparent", CLIENT)]) is None


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, None),
        ({"OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, None),
    ],
)
def test_the_standard_variables_switch_tracing(
    environ: dict[str, str], wanted: list[str] | None
) -> None:
    assert tracing._wanted(None, environ) == wanted


def test_the_config_switches_tracing_on_and_the_variables_can_still_turn_it_off() -> None:
    settings = load_config_text(
        "llm_providers: [{model: openai/gpt-5, access_key: k}]\n"
        "archway: {tracing: {collector: 'otel:4317'}}\n"
    ).gateway.tracing
    assert settings is not None
    assert tracing._wanted(settings, {}) == ["otlp"]
    assert tracing._wanted(settings, {"OTEL_TRACES_EXPORTER": "none"}) is None
    assert tracing._wanted(settings, {"OTEL_SDK_DISABLED": "true"}) is None


def test_console_export_turns_tracing_on_and_shutdown_off() -> None:
    try:
        assert tracing.configure_tracing(None, {"OTEL_TRACES_EXPORTER": "console"}) == (
            "the console"
        )
        assert tracing.tracer() is not None
    finally:
        tracing.shutdown_tracing()
    assert tracing.tracer() is None


def test_a_missing_exporter_package_leaves_tracing_off(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_otlp(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("opentelemetry.exporter.otlp"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_otlp)
    caplog.set_level(logging.ERROR, logger="archway.tracing")
    assert tracing.configure_tracing(None, {"OTEL_TRACES_EXPORTER": "otlp"}) is None
    assert tracing.tracer() is None
    assert "archway[otlp]" in caplog.text


def test_a_request_span_carries_the_decision(spans: InMemorySpanExporter) -> None:
    _route("anthropic/claude-sonnet-4-5", traceparent=CLIENT)
    span = _only(spans, tracing.REQUEST_SPAN)
    assert span.kind is SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == CLIENT.split("-")[1]
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CLIENT.split("-")[2]
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "archway.model": "anthropic/claude-sonnet-4-5",
        "archway.provider": "anthropic",
        "archway.resolution": "direct",
        "archway.requested_model": "anthropic/claude-sonnet-4-5",
        "archway.cluster": "anthropic",
        "archway.translation": "openai-to-anthropic",
    }
    assert "SECRET" not in str(span.to_json())


def test_envoys_span_is_preferred_to_the_clients(spans: InMemorySpanExporter) -> None:
    _route(None, traceparent=CLIENT, trace_context={"traceparent": ENVOY})
    span = _only(spans, tracing.REQUEST_SPAN)
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "1111111111111111"
    assert dict(span.attributes or {})["archway.resolution"] == "default"


def test_without_a_traceparent_the_span_starts_a_trace(spans: InMemorySpanExporter) -> None:
    _route(None)
    assert _only(spans, tracing.REQUEST_SPAN).parent is None


def test_an_error_ends_the_span_with_its_code(spans: InMemorySpanExporter) -> None:
    _route("openai/nothing-here")
    span = _only(spans, tracing.REQUEST_SPAN)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "model_not_found"
    attributes = dict(span.attributes or {})
    assert attributes["archway.error"] == "model_not_found"
    assert attributes["http.response.status_code"] == 400


def test_the_router_call_is_a_child_span(spans: InMemorySpanExporter) -> None:
    async def choose() -> RouteChoice:
        return RouteChoice("code_generation", 0.82)

    telemetry = RequestTelemetry()
    telemetry.started({":method": "POST"}, {"traceparent": CLIENT}, "/v1/chat/completions")
    choice = asyncio.run(telemetry.router_call(choose()))
    assert choice.route == "code_generation"
    router = _only(spans, tracing.ROUTER_SPAN)
    assert telemetry.span is not None
    assert router.parent is not None
    assert router.parent.span_id == telemetry.span.get_span_context().span_id
    assert dict(router.attributes or {}) == {
        "archway.route": "code_generation",
        "archway.route_score": 0.82,
    }


def test_a_failing_router_call_still_ends_its_span(spans: InMemorySpanExporter) -> None:
    async def choose() -> RouteChoice:
        raise RuntimeError("backend down")

    telemetry = RequestTelemetry()
    telemetry.started({}, None, "/v1/chat/completions")
    with pytest.raises(RuntimeError):
        asyncio.run(telemetry.router_call(choose()))
    assert _only(spans, tracing.ROUTER_SPAN).end_time is not None


def test_no_span_and_no_cost_when_tracing_is_off() -> None:
    telemetry = RequestTelemetry()
    telemetry.started({"traceparent": CLIENT}, None, "/v1/chat/completions")
    assert telemetry.span is None


TRACED_CONFIG = """
llm_providers:
  - model: openai/gpt-5
    access_key: k
    default: true
archway:
  tracing:
    collector: otel-collector.observability:4317
    sample_percent: 10
"""


def test_envoy_traces_when_the_config_says_so() -> None:
    config_ = load_config_text(TRACED_CONFIG)
    data = bootstrap_dict(config_)
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    traced = hcm["typed_config"]["tracing"]
    assert traced["random_sampling"] == {"value": 10.0}
    assert traced["provider"]["name"] == "envoy.tracers.opentelemetry"
    service = traced["provider"]["typed_config"]["grpc_service"]
    assert service["envoy_grpc"]["cluster_name"] == OTEL_COLLECTOR_CLUSTER
    tags = {t["tag"]: t["request_header"]["name"] for t in traced["custom_tags"]}
    assert tags["archway.model"] == "x-archway-model"
    assert tags["archway.affinity"] == "x-archway-affinity"
    clusters = {c["name"]: c for c in data["static_resources"]["clusters"]}
    collector = clusters[OTEL_COLLECTOR_CLUSTER]
    assert collector["type"] == "STRICT_DNS"
    address = collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"] == {
        "address": "otel-collector.observability",
        "port_value": 4317,
    }
    validate_bootstrap(render_bootstrap(config_))


def test_envoy_does_not_trace_by_default() -> None:
    data = bootstrap_dict(load_config_text("llm_providers: [{model: openai/gpt-5, access_key: k}]"))
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert "tracing" not in hcm["typed_config"]
    assert OTEL_COLLECTOR_CLUSTER not in {c["name"] for c in data["static_resources"]["clusters"]}


@pytest.mark.parametrize(
    ("tracing_yaml", "problem"),
    [
        ("{sample_percent: 5}", "missing required key 'collector'"),
        ("{collector: otel}", "expected HOST:PORT"),
        ("{collector: 'otel:0'}", "expected HOST:PORT"),
        ("{collector: 'otel:4317', sample_percent: 101}", "out of range"),
        ("{collector: 'otel:4317', exporter: x}", "unknown key 'exporter'"),
    ],
)
def test_tracing_settings_are_checked(tracing_yaml: str, problem: str) -> None:
    from ext_proc.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config_text(
            "llm_providers: [{model: openai/gpt-5, access_key: k}]\n"
            f"archway: {{tracing: {tracing_yaml}}}\n"
        )
    assert problem in str(caught.value)
