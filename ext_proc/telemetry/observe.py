"""What the processors report about each request: metrics always, spans when on.

The processors call these few methods at their decision points and know nothing
of Prometheus or OpenTelemetry; the transport that runs them (grpc.aio or
another) needs no instrumentation of its own beyond handing over the stream's
trace context.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from ext_proc.errors import GatewayError
from ext_proc.router import RouteChoice
from ext_proc.routing.resolve import RoutingDecision, RoutingTable, configured_entry
from ext_proc.telemetry import metrics, tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ext_proc.config import Config
    from ext_proc.routing.plan import RequestPlan
    from ext_proc.server.metering import UsageReport

USAGE_SPAN = "archway.usage"

__all__ = [
    "AttemptTelemetry",
    "ProcessObservability",
    "RequestTelemetry",
    "client_answered",
    "config_reloaded",
    "shared_state_failed",
    "usage_reported",
]


class RequestTelemetry:
    """One routing stream's report: the request counted once, at its outcome."""

    __slots__ = ("_clock", "span", "started_at")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.span: Span | None = None
        # Injected so that a test can time the router call without sleeping.
        self._clock = clock
        self.started_at = 0.0
        """Wall-clock seconds when the request's headers arrived."""

    def started(
        self,
        headers: Mapping[str, str],
        stream_context: Mapping[str, str] | None,
        path: str,
    ) -> None:
        self.started_at = time.time()
        if tracing.tracer() is None:
            return
        self.span = tracing.start_span(
            tracing.REQUEST_SPAN,
            (stream_context, headers),
            {
                "http.request.method": headers.get(":method", ""),
                # Without the query: some clients put keys there (Azure's api-key).
                "url.path": path.partition("?")[0],
            },
        )

    def routed(self, table: RoutingTable, plan: RequestPlan, affinity: str | None) -> None:
        decision = plan.decision
        recorder = metrics.recorder()
        recorder.prime(table)
        recorder.request_routed(decision)
        translation = plan.translation
        pair = None
        if translation is not None:
            pair = translation.pair
            recorder.translated(pair)
        if affinity is not None:
            recorder.affinity_used(affinity)
        span = self.span
        if span is not None:
            self.span = None
            _set_decision(span, decision, pair, affinity)
            span.end()

    def answered(self) -> None:
        """A request answered without routing or error (``GET /v1/models``)."""
        span = self.span
        if span is not None:
            self.span = None
            span.set_attribute("http.response.status_code", 200)
            span.end()

    def failed(self, error: GatewayError, *, before_routing: bool) -> None:
        """An immediate error response; ``before_routing`` when it answers the
        request itself rather than a response being translated."""
        recorder = metrics.recorder()
        recorder.error_answered(error.code)
        if before_routing:
            recorder.request_failed(error.code)
        span = self.span
        if span is not None:
            self.span = None
            tracing.end_with_error(span, error.code, error.status)

    async def router_call(self, choose: Awaitable[RouteChoice]) -> RouteChoice:
        """Await the preference router's answer: its latency goes to a histogram,
        its route to a counter, and the call gets a child span of the request's."""
        span = None
        if self.span is not None:
            span = tracing.start_child_span(self.span, tracing.ROUTER_SPAN)
        started = self._clock()
        try:
            choice = await choose
        except BaseException:
            if span is not None:
                span.end()
            raise
        metrics.recorder().router_answered(choice.route, self._clock() - started)
        if span is not None:
            span.set_attribute("archway.route", choice.route)
            if choice.score is not None:
                span.set_attribute("archway.route_score", choice.score)
            span.end()
        return choice


def _set_decision(
    span: Span, decision: RoutingDecision, translation: str | None, affinity: str | None
) -> None:
    # Names and routes only: never a header value, a key or a prompt.
    span.set_attribute("archway.model", decision.model)
    span.set_attribute("archway.provider", decision.provider.provider)
    span.set_attribute("archway.resolution", decision.resolution.value)
    span.set_attribute("archway.cluster", decision.cluster)
    if decision.requested is not None:
        span.set_attribute("archway.requested_model", decision.requested)
    if decision.route is not None:
        span.set_attribute("archway.route", decision.route)
    if decision.fallbacks:
        span.set_attribute("archway.fallbacks", list(decision.fallbacks))
    if translation is not None:
        span.set_attribute("archway.translation", translation)
    if affinity is not None:
        span.set_attribute("archway.affinity", affinity)


class AttemptTelemetry:
    """A failover retry attempt: counted by the models involved, and a span."""

    @staticmethod
    def fallback(
        table: RoutingTable,
        chain: list[str],
        index: int,
        decision: RoutingDecision,
        headers: Mapping[str, str],
        stream_context: Mapping[str, str] | None,
    ) -> None:
        failed = _configured_model(table, chain[index - 1]) if index > 0 else ""
        metrics.recorder().fallback_attempted(failed, decision.provider.model)
        if tracing.tracer() is None:
            return
        span = tracing.start_span(tracing.FALLBACK_SPAN, (stream_context, headers))
        if span is not None:
            span.set_attribute("archway.failed_model", chain[index - 1] if index > 0 else "")
            span.set_attribute("archway.attempt", index + 1)
            _set_decision(span, decision, None, None)
            span.end()


def _configured_model(table: RoutingTable, name: str) -> str:
    """The configured entry serving ``name`` (``openai/*`` for a wildcard's model)."""
    provider = configured_entry(table.models, name)
    return provider.model if provider is not None else ""


def usage_reported(
    report: UsageReport,
    stream_context: Mapping[str, str] | None,
    headers: Mapping[str, str],
) -> None:
    """An answer's usage: token counters, stream timings, and a span with the
    GenAI semantic conventions' attributes (a child of Envoy's span for the
    response stream, so it lands in the request's trace)."""
    recorder = metrics.recorder()
    usage = report.usage
    if usage is not None:
        recorder.tokens_used(report.provider, report.model, report.client, usage)
    if report.first_token_s is not None:
        recorder.stream_timing(
            report.provider, report.model, report.first_token_s, report.per_token_s
        )
    if tracing.tracer() is None:
        return
    attributes: dict[str, str | int | float] = {
        "gen_ai.provider.name": report.provider,
        "gen_ai.request.model": report.model,
    }
    response_model = headers.get("x-archway-model")
    attributes["gen_ai.response.model"] = response_model or report.model
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
        attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    if report.first_token_s is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = report.first_token_s
    if report.client is not None:
        attributes["archway.client"] = report.client
    span = tracing.start_span(USAGE_SPAN, (stream_context, headers), attributes)
    if span is not None:
        span.end()


def client_answered(client: str, outcome: str) -> None:
    metrics.recorder().client_request(client, outcome)


def shared_state_failed(store: str, operation: str) -> None:
    metrics.recorder().shared_state_failed(store, operation)


def config_reloaded(result: str) -> None:
    metrics.recorder().config_reloaded(result)


class ProcessObservability:
    """The metrics endpoint and tracing of one ``archway serve`` or ``up`` process.

    Created by the process that answers scrapes (the single server, or a
    supervising parent); worker processes only need ``use_multiprocess_dir``,
    inherited through the environment, and their own ``configure_tracing``.
    """

    def __init__(self, endpoint: metrics.MetricsEndpoint | None, tracing_to: str | None) -> None:
        self.endpoint = endpoint
        self.tracing_to = tracing_to

    @classmethod
    def start(
        cls, config: Config, *, metrics_address: str, metrics_port: int | None
    ) -> ProcessObservability:
        """Serve metrics on ``metrics_address:metrics_port`` (``None``: no endpoint;
        0: a free port) and turn tracing on if the config or environment asks."""
        endpoint = None
        if metrics_port is not None:
            endpoint = metrics.start_metrics_endpoint(metrics_address, metrics_port)
        return cls(endpoint, tracing.configure_tracing(config.gateway.tracing))

    def close(self) -> None:
        tracing.shutdown_tracing()
        if self.endpoint is not None:
            self.endpoint.stop()
