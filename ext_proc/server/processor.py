"""The per-request state machine: request headers, then body, then a response.

One ``RequestProcessor`` lives for one ext_proc stream. Envoy opens two kinds:

- the routing filter's, for every request: request headers, then the
  buffered request body (resolve, rewrite, translate the request);
- the response-translation filter's, only for requests whose body was
  translated (Envoy's route enables that filter on ``TRANSLATE_HEADER``):
  response headers, then the response body, streamed or buffered.

``handle`` is a coroutine because some phases wait on I/O (the preference
router); phases that do not, never suspend. It never raises: every outcome is
a ProcessingResponse, so Envoy always gets an answer and the client always
gets JSON in its own API's shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyResponse,
    HeadersResponse,
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
    TrailersResponse,
)

from ext_proc.access import gate
from ext_proc.access.gate import USAGE_HEADER, Ticket
from ext_proc.access.policy import Client
from ext_proc.errors import GatewayError, error_body
from ext_proc.headers import (
    AFFINITY_NEW,
    AFFINITY_PINNED,
    CLIENT_AFFINITY_HEADER,
    DECISION_AFFINITY,
    DECISION_MODEL,
    DECISION_PROVIDER,
    INTERNAL_PREFIX,
    TRANSLATE_HEADER,
)
from ext_proc.router import RouteChoice
from ext_proc.router.service import ConfiguredRouter
from ext_proc.routing import affinity
from ext_proc.routing.catalog import WireAPI
from ext_proc.routing.endpoints import Endpoint, classify, client_api, models_listing
from ext_proc.routing.plan import parse_request, plan_request, requested_model
from ext_proc.routing.resolve import AUTO_MODELS, RoutingDecision, RoutingTable
from ext_proc.server import messages
from ext_proc.server.messages import ResponseBodyMode
from ext_proc.server.metering import ResponseMeter
from ext_proc.state.process import SharedState, process_state
from ext_proc.telemetry import observe
from ext_proc.telemetry.observe import RequestTelemetry
from ext_proc.translate import (
    StreamTranslator,
    TranslationContext,
    stream_translator,
    translate_error,
    translate_response,
)
from ext_proc.translate.sse import SSEError

__all__ = ["RequestProcessor"]

log = logging.getLogger("archway.processor")


_SSE_TYPE = "text/event-stream"
_REQUEST_PHASES = frozenset({"request_headers", "request_body", "request_trailers", None})


class _ResponseTranslation:
    """The response side of one translated request."""

    __slots__ = ("context", "created", "status", "stream")

    def __init__(
        self,
        context: TranslationContext,
        status: int,
        created: int,
        stream: StreamTranslator | None = None,
    ) -> None:
        self.context = context
        self.status = status
        self.created = created
        """OpenAI's ``created``; Anthropic responses carry no timestamp."""
        self.stream = stream
        """Set for a streamed (SSE) body; ``None`` for a buffered JSON one."""


class RequestProcessor:
    __slots__ = (
        "_api",
        "_client",
        "_endpoint",
        "_headers",
        "_meter",
        "_response",
        "_router",
        "_table",
        "_telemetry",
        "_trace_context",
    )

    def __init__(
        self,
        table: RoutingTable,
        router: ConfiguredRouter | None = None,
        *,
        trace_context: Mapping[str, str] | None = None,
    ) -> None:
        # The table is captured per request, so a config reload never changes
        # the rules under a request already in flight.
        self._table = table
        self._router = router
        self._api = WireAPI.OPENAI
        self._endpoint: Endpoint | None = None
        self._headers: dict[str, str] = {}
        self._response: _ResponseTranslation | None = None
        self._meter: ResponseMeter | None = None
        self._client: Client | None = None
        """The configured client whose key the request presented (``archway.clients``)."""
        self._telemetry = RequestTelemetry()
        self._trace_context = trace_context
        """The gRPC stream's W3C trace context (Envoy's span), when tracing is on."""

    async def handle(self, request: ProcessingRequest) -> ProcessingResponse:
        phase = request.WhichOneof("request")
        try:
            if phase == "request_headers":
                return self._on_request_headers(request.request_headers)
            if phase == "request_body":
                return await self._on_request_body(request.request_body)
            if phase == "response_body":
                return await self._on_response_body(request.response_body)
            if phase == "response_headers":
                return await self._on_response_headers(request.response_headers)
            return _pass_through(phase)
        except GatewayError as exc:
            return self._error(exc, phase)
        except Exception:
            # Never a traceback to the client and never a hung stream.
            log.exception("unexpected error while processing %s", phase)
            return self._error(
                GatewayError(500, "Archway failed to process this request.", code="internal_error"),
                phase,
            )

    def _on_request_headers(self, msg: HttpHeaders) -> ProcessingResponse:
        headers = messages.header_map(msg)
        path = headers.get(":path", "/")
        self._telemetry.started(headers, self._trace_context, path)
        self._api = client_api(path)
        access = self._table.config.access
        if access.keys_required:
            # Before anything else, the model listing included: a gateway with
            # clients configured tells nothing to a caller without a key.
            self._client = gate.authenticate(access, headers)
        endpoint = classify(headers.get(":method", "GET"), path)
        if endpoint is Endpoint.MODELS:
            api = WireAPI.ANTHROPIC if "anthropic-version" in headers else WireAPI.OPENAI
            self._telemetry.answered()
            return messages.immediate_response(200, models_listing(self._table, api))
        if msg.end_of_stream:
            raise GatewayError(
                400, "This endpoint needs a JSON request body; none was sent.", code="empty_body"
            )
        self._endpoint = endpoint
        self._headers = headers
        # Internal routing headers come only from Archway: a client must never
        # pick a cluster or fake a decision by sending them.
        forged = [name for name in headers if name.startswith(INTERNAL_PREFIX)]
        return messages.headers_response(remove_headers=forged)

    async def _on_request_body(self, msg: HttpBody) -> ProcessingResponse:
        if self._endpoint is None:
            raise GatewayError(400, "Request body arrived before its headers.", code="bad_request")
        table = self._table
        parsed = None
        requested: str | None = None
        open_model = False
        decision: RoutingDecision | None = None
        state: SharedState | None = None
        access = table.config.access
        session = self._headers.get(CLIENT_AFFINITY_HEADER)
        key = None
        if session is not None:
            tenant = self._headers.get(access.tenant_header) if access.tenant_header else None
            key = affinity.session_key(session, tenant)
        if key is not None or self._router is not None:
            # Parsed once here and handed on: a bad body raises the same 4xx
            # plan_request would.
            parsed = parse_request(self._headers, msg.body)
            requested = requested_model(parsed.data)
            open_model = requested is None or requested.strip().lower() in AUTO_MODELS
        # Only open models are pinned: an explicit model or alias is the client's choice.
        if key is not None and open_model:
            state = self._state()
            decision = await affinity.recall(state, key, table, requested)
        choice: RouteChoice | None = None
        if decision is None and open_model and self._router is not None:
            assert parsed is not None
            choice = await self._telemetry.router_call(
                self._router.decide(parsed.data, self._endpoint.api)
            )
        plan = plan_request(
            table,
            self._endpoint,
            self._headers,
            msg.body,
            route=choice.route if choice is not None else None,
            route_score=choice.score if choice is not None else None,
            parsed=parsed,
            decision=decision,
        )
        pinned_state: str | None = None
        if state is not None and key is not None:
            pinned_state = AFFINITY_PINNED
            if decision is None:
                ttl_s = table.config.affinity.ttl_s
                winner = await affinity.claim(state, key, plan.decision, ttl_s, table, requested)
                if winner is None:
                    pinned_state = AFFINITY_NEW
                else:
                    # Another worker or gateway pinned this session first: follow it.
                    plan = plan_request(
                        table,
                        self._endpoint,
                        self._headers,
                        msg.body,
                        parsed=parsed,
                        decision=winner,
                    )
        set_headers = plan.set_headers
        if pinned_state is not None:
            set_headers = (*set_headers, (DECISION_AFFINITY, pinned_state))
        metadata: dict[str, str] = {}
        if access.meters or self._client is not None:
            set_headers = await self._account(plan.decision, msg.body, set_headers, metadata)
        self._telemetry.routed(table, plan, pinned_state)
        if log.isEnabledFor(logging.DEBUG):
            d = plan.decision
            log.debug(
                "routed requested=%r -> %s via %s%s (cluster %s)",
                d.requested,
                d.model,
                d.resolution.value,
                f" ({d.route})" if d.route else "",
                d.cluster,
            )
        response = messages.body_response(set_headers, plan.remove_headers, plan.body)
        return messages.set_metadata(response, metadata)

    def _state(self) -> SharedState:
        table = self._table
        return process_state(
            table.config.access.redis_url,
            table.config.affinity.max_entries,
            observe.shared_state_failed,
        )

    async def _account(
        self,
        decision: RoutingDecision,
        body: bytes,
        set_headers: tuple[tuple[str, str], ...],
        metadata: dict[str, str],
    ) -> tuple[tuple[str, str], ...]:
        """The client's allow-list (403) and every token limit the request counts
        against (429); then the ticket that has its answer's usage counted."""
        access = self._table.config.access
        client = self._client
        if client is not None:
            refused = gate.forbidden(client, decision.model, decision.alias)
            if refused is not None:
                raise refused
            metadata["client"] = client.name
        estimate, counters = 0, ()
        if access.counts_tokens:
            estimate, counters = await gate.admit(
                self._state(),
                access,
                client,
                decision.model,
                (decision.alias, decision.requested, decision.upstream_model),
                self._headers,
                body,
            )
        if client is not None:
            observe.client_answered(client.name, "routed")
        if not access.meters:
            return set_headers
        ticket = Ticket(
            client.name if client is not None else None,
            decision.provider.provider,
            decision.model,
            int(self._telemetry.started_at * 1000),
            estimate,
            tuple((c.key, c.window_s) for c in counters),
        )
        return (*set_headers, (USAGE_HEADER, ticket.header_value()))

    async def _on_response_headers(self, msg: HttpHeaders) -> ProcessingResponse:
        headers = messages.header_map(msg)
        context = TranslationContext.from_header(headers.get(TRANSLATE_HEADER))
        ticket_value = headers.get(USAGE_HEADER)
        if context is None and ticket_value is None:
            # Nothing to translate or count: the route was picked on a client's
            # forged header before it was stripped. Leave the body alone.
            return messages.response_headers_response()
        ticket = Ticket.from_header(ticket_value)
        # The response stream never saw the request's headers: these name the
        # decision (echoed by the route) and carry Envoy's trace context.
        self._headers = headers
        remove = [TRANSLATE_HEADER] if context is not None else []
        if ticket_value is not None:
            remove.append(USAGE_HEADER)
        if context is not None:
            self._api = context.client
        status = _status(headers)
        if (msg.end_of_stream or status >= 300) and ticket is not None and ticket.counters:
            # No answer to count: what the request was estimated at is given back.
            await gate.settle(self._state(), ticket, None, refund=True)
        if context is None:
            return self._meter_native(headers, ticket, remove, msg.end_of_stream or status >= 300)
        if msg.end_of_stream:
            return messages.response_headers_response(remove_headers=remove)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise GatewayError(
                502,
                f"The model provider sent a {encoding}-encoded body, which Archway cannot "
                "translate.",
                code="upstream_encoding",
            )
        created = int(time.time())
        media_type = _media_type(headers)
        if status < 300 and (media_type == _SSE_TYPE or _is_json(media_type)):
            self._meter = _response_meter(headers, ticket, streamed=media_type == _SSE_TYPE)
        if status >= 300:
            # Errors are small JSON (or text) bodies: rewritten whole, in the
            # client's error shape, with the upstream's status kept.
            self._response = _ResponseTranslation(context, status, created)
            return messages.response_headers_response(
                [("content-type", "application/json")],
                remove,
                body_mode=ResponseBodyMode.BUFFERED,
            )
        if media_type == _SSE_TYPE:
            stream = stream_translator(context, created=created)
            self._response = _ResponseTranslation(context, status, created, stream)
            # The translated stream has another length; Envoy sends it chunked.
            remove.append("content-length")
            return messages.response_headers_response(
                remove_headers=remove, body_mode=ResponseBodyMode.STREAMED
            )
        if _is_json(media_type):
            self._response = _ResponseTranslation(context, status, created)
            return messages.response_headers_response(
                remove_headers=remove, body_mode=ResponseBodyMode.BUFFERED
            )
        return messages.response_headers_response(remove_headers=remove)

    def _meter_native(
        self, headers: dict[str, str], ticket: Ticket | None, remove: list[str], done: bool
    ) -> ProcessingResponse:
        """An answer in the client's own API whose usage is counted: the body
        passes unchanged, streamed for SSE (each chunk reaches the client as it
        comes) and buffered for JSON (usage is in the whole body)."""
        media_type = _media_type(headers)
        streamed = media_type == _SSE_TYPE
        if done or not (streamed or _is_json(media_type)):
            return messages.response_headers_response(remove_headers=remove)
        self._meter = _response_meter(headers, ticket, streamed=streamed)
        mode = ResponseBodyMode.STREAMED if streamed else ResponseBodyMode.BUFFERED
        return messages.response_headers_response(remove_headers=remove, body_mode=mode)

    async def _on_response_body(self, msg: HttpBody) -> ProcessingResponse:
        meter = self._meter
        if meter is None:
            return self._translate_body(msg)
        meter.feed(msg.body)
        response = self._translate_body(msg) if self._response is not None else None
        if response is None:
            response = messages.body_unchanged_response()
        if msg.end_of_stream or meter.finished:
            self._meter = None
            report = meter.finish()
            observe.usage_reported(report, self._trace_context, self._headers)
            if meter.ticket is not None:
                await gate.settle(self._state(), meter.ticket, report.usage)
            messages.set_metadata(response, report.log_fields())
        return response

    def _translate_body(self, msg: HttpBody) -> ProcessingResponse:
        translation = self._response
        if translation is None:
            return _pass_through("response_body")
        stream = translation.stream
        if stream is not None:
            try:
                out = stream.feed(msg.body)
                if msg.end_of_stream:
                    out += stream.finish()
            except SSEError as exc:
                raise GatewayError(
                    502, f"The model provider's stream is broken: {exc}.", code="upstream_stream"
                ) from None
            return messages.response_body_response(out)
        if translation.status >= 300:
            body = translate_error(translation.context, translation.status, msg.body)
        else:
            body = translate_response(translation.context, msg.body, created=translation.created)
        return messages.response_body_response(body, [("content-length", str(len(body)))])

    def _error(self, exc: GatewayError, phase: str | None) -> ProcessingResponse:
        self._telemetry.failed(exc, before_routing=phase in _REQUEST_PHASES)
        if self._client is not None and phase in _REQUEST_PHASES:
            observe.client_answered(self._client.name, exc.code)
        return messages.immediate_response(
            exc.status, error_body(self._api, exc), exc.headers, details=exc.code
        )


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _response_meter(
    headers: dict[str, str], ticket: Ticket | None, *, streamed: bool
) -> ResponseMeter:
    if ticket is not None:
        return ResponseMeter(ticket, ticket.provider, ticket.model, streamed=streamed)
    # A translated request without a ticket: the decision headers echoed onto
    # the response name what answered.
    return ResponseMeter(
        None,
        headers.get(DECISION_PROVIDER, ""),
        headers.get(DECISION_MODEL, ""),
        streamed=streamed,
    )


def _status(headers: dict[str, str]) -> int:
    try:
        return int(headers.get(":status", "200"))
    except ValueError:
        return 200


def _pass_through(phase: str | None) -> ProcessingResponse:
    """Answer a phase Archway did not ask for without touching it."""
    if phase == "response_headers":
        return ProcessingResponse(response_headers=HeadersResponse())
    if phase == "response_body":
        return ProcessingResponse(response_body=BodyResponse())
    if phase == "request_trailers":
        return ProcessingResponse(request_trailers=TrailersResponse())
    if phase == "response_trailers":
        return ProcessingResponse(response_trailers=TrailersResponse())
    raise GatewayError(400, "Empty processing request.", code="bad_request")
