"""Optional OpenTelemetry tracing of the ext_proc server.

Off by default, and then it costs one ``None`` check per phase. It comes on when
the config has an ``archway.tracing`` section or the standard variables ask for
it (``OTEL_TRACES_EXPORTER`` other than ``none``, ``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` keep it off whatever the config says.

``opentelemetry-api`` and ``-sdk`` are an optional extra (``archway[tracing]``),
imported only when tracing is on; the OTLP exporter is another
(``archway[otlp]``), and ``console`` needs none.

Each routing stream gets a server span, ``archway.request``, whose parent is the
first W3C ``traceparent`` found in: the gRPC stream's metadata (Envoy's span for
its ext_proc call, when Envoy traces) and then the client's request headers.
The preference router's call is a child span, ``archway.router``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from ext_proc.config import TracingSettings

__all__ = [
    "REQUEST_SPAN",
    "ROUTER_SPAN",
    "TRACEPARENT",
    "configure_tracing",
    "install_tracer_provider",
    "shutdown_tracing",
    "start_span",
    "stream_trace_context",
    "tracer",
]

log = logging.getLogger("archway.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
REQUEST_SPAN = "archway.request"
ROUTER_SPAN = "archway.router"
FALLBACK_SPAN = "archway.fallback"

_INSTRUMENTATION = "archway"
_DEFAULT_SERVICE = "archway"

_tracer: Tracer | None = None
_provider: Any = None
"""The SDK ``TracerProvider`` this module made or was given; flushed at shutdown."""


def tracer() -> Tracer | None:
    """The tracer when tracing is on, else ``None``: the request path's only check."""
    return _tracer


def install_tracer_provider(provider: Any) -> None:
    """Trace with ``provider`` (tests give one with an in-memory exporter);
    ``None`` turns tracing off."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer(_INSTRUMENTATION)


def shutdown_tracing() -> None:
    """Export what is buffered and turn tracing off."""
    provider = _provider
    install_tracer_provider(None)
    if provider is not None and hasattr(provider, "shutdown"):
        provider.shutdown()


def _wanted(settings: TracingSettings | None, environ: Mapping[str, str]) -> list[str] | None:
    """The exporters to use, or ``None`` when tracing stays off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    if names == ["none"]:
        return None
    endpoint_set = any(
        environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if settings is None and not names and not endpoint_set:
        return None
    return [name for name in names if name != "none"] or ["otlp"]


def configure_tracing(
    settings: TracingSettings | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """Turn tracing on if the config or the environment asks for it.

    Returns a line saying where spans go, or ``None`` when tracing stays off. A
    missing optional package is logged and leaves tracing off: observability
    must never stop the gateway from routing.
    """
    environ = os.environ if environ is None else environ
    names = _wanted(settings, environ)
    if names is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        log.error(
            "tracing is asked for but OpenTelemetry is not installed; "
            "pip install 'archway[tracing]' (and 'archway[otlp]' for OTLP)"
        )
        return None
    exporters: list[tuple[str, Any]] = []
    for name in names:
        exporter = _exporter(name, settings, environ)
        if exporter is not None:
            exporters.append(exporter)
    if not exporters:
        return None
    sampler = None
    if settings is not None and not environ.get("OTEL_TRACES_SAMPLER"):
        # The same share as Envoy's random sampling; a sampled parent wins either way.
        sampler = ParentBased(TraceIdRatioBased(settings.sample_percent / 100.0))
    service = environ.get("OTEL_SERVICE_NAME") or _DEFAULT_SERVICE
    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=sampler)
    for _, exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    install_tracer_provider(provider)
    where = ", ".join(description for description, _ in exporters)
    log.info("tracing on: spans to %s", where)
    return where


def _exporter(
    name: str, settings: TracingSettings | None, environ: Mapping[str, str]
) -> tuple[str, Any] | None:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return "the console", ConsoleSpanExporter()
    if name != "otlp":
        log.error("OTEL_TRACES_EXPORTER=%s is not supported; use otlp or console", name)
        return None
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        # gRPC by default: the collector Envoy exports to speaks it, and grpcio is
        # already installed.
        or "grpc"
    ).strip()
    env_endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    kwargs: dict[str, Any] = {}
    if not env_endpoint and settings is not None:
        host = (
            f"[{settings.collector_host}]"
            if ":" in settings.collector_host
            else (settings.collector_host)
        )
        kwargs["endpoint"] = f"http://{host}:{settings.collector_port}"
        if protocol == "http/protobuf":
            kwargs["endpoint"] += "/v1/traces"
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[no-redef]
                OTLPSpanExporter,
            )
        else:
            log.error("OTLP protocol %r is not supported; use grpc or http/protobuf", protocol)
            return None
    except ImportError:
        log.error("the OTLP exporter is not installed; pip install 'archway[otlp]'")
        return None
    exporter = OTLPSpanExporter(**kwargs)
    # Only the address: an endpoint URL may carry credentials in its user part.
    shown = kwargs.get("endpoint") or "the OTEL_EXPORTER_OTLP_* endpoint"
    if "@" in shown:
        shown = "(an endpoint with credentials)"
    return f"OTLP/{protocol} at {shown}", exporter


def stream_trace_context(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str] | None:
    """The W3C trace context in a gRPC stream's metadata, when tracing is on and
    there is one: Envoy puts its ext_proc call's span there when it traces."""
    if _tracer is None or not metadata:
        return None
    carrier = {
        key: value
        for key, value in metadata
        if key in (TRACEPARENT, TRACESTATE) and isinstance(value, str)
    }
    return carrier if TRACEPARENT in carrier else None


def start_span(
    name: str,
    carriers: Iterable[Mapping[str, str] | None],
    attributes: Mapping[str, Any] | None = None,
    *,
    kind_server: bool = True,
) -> Span | None:
    """A span whose parent is the first carrier with a ``traceparent``; ``None``
    when tracing is off."""
    current = _tracer
    if current is None:
        return None
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = None
    for carrier in carriers:
        if carrier and TRACEPARENT in carrier:
            context = TraceContextTextMapPropagator().extract(
                {
                    TRACEPARENT: carrier[TRACEPARENT],
                    TRACESTATE: carrier.get(TRACESTATE, ""),
                }
            )
            break
    return current.start_span(
        name,
        context=context,
        kind=SpanKind.SERVER if kind_server else SpanKind.INTERNAL,
        attributes=dict(attributes or {}),
    )


def start_child_span(parent: Span, name: str) -> Span | None:
    """A span under ``parent``, for a step of the request (the router's call)."""
    current = _tracer
    if current is None:
        return None
    from opentelemetry.trace import SpanKind, set_span_in_context

    return current.start_span(name, context=set_span_in_context(parent), kind=SpanKind.INTERNAL)


def end_with_error(span: Span, code: str, status: int) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("archway.error", code)
    span.set_attribute("http.response.status_code", status)
    # The code only: error messages quote what the client sent.
    span.set_status(Status(StatusCode.ERROR, code))
    span.end()
