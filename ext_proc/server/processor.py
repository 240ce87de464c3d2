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

import dataclasses
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

from ext_proc.errors import GatewayError, error_body
from ext_proc.headers import (
    AFFINITY_NEW,
    AFFINITY_PINNED,
    CLIENT_AFFINITY_HEADER,
    DECISION_AFFINITY,
    INTERNAL_PREFIX,
    TRANSLATE_HEADER,
)
from ext_proc.router import RouteChoice
from ext_proc.router.service import ConfiguredRouter
from ext_proc.routing import affinity
from ext_proc.routing.catalog import WireAPI
from ext_proc.routing.endpoints import Endpoint, classify, client_api, models_listing
from ext_proc.routing.plan import parse_request, plan_request, requested_model
from ext_proc.routing.request_preferences import (
    pop_request_preferences,
    resolve_request_route,
    routes_for_router,
)
from ext_proc.routing.resolve import AUTO_MODELS, RoutingDecision, RoutingTable
from ext_proc.server import messages
from ext_proc.server.messages import ResponseBodyMode
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
        "_endpoint",
        "_headers",
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
                return self._on_response_body(request.response_body)
            if phase == "response_headers":
                return self._on_response_headers(request.response_headers)
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
        pins: affinity.AffinityCache | None = None
        session = self._headers.get(CLIENT_AFFINITY_HEADER)
        key = affinity.session_key(session) if session is not None else None
        # Parsed once here and handed on: a bad body raises the same 4xx
        # plan_request would.
        parsed = parse_request(self._headers, msg.body)
        requested = requested_model(parsed.data)
        open_model = requested is None or requested.strip().lower() in AUTO_MODELS
        own_routes = pop_request_preferences(parsed.data, table)
        if own_routes is not None:
            # The body no longer says what the client sent: no splicing into it.
            parsed = dataclasses.replace(parsed, text=None, model_span=None)
        # Only open models are pinned: an explicit model or alias is the client's
        # choice, and a request's own routes are its choice too.
        if key is not None and open_model and own_routes is None:
            pins = affinity.process_pins(table.config.affinity)
            decision = pins.recall(key, table, requested)
        choice: RouteChoice | None = None
        if own_routes is not None and open_model:
            if self._router is None:
                raise GatewayError(
                    400,
                    "routing_preferences needs a preference router, and this gateway has "
                    "none configured; send a model instead.",
                    code="router_not_configured",
                    param="routing_preferences",
                )
            choice = await self._telemetry.router_call(
                self._router.decide(parsed.data, self._endpoint.api, routes_for_router(own_routes))
            )
            decision = resolve_request_route(table, requested, choice.route, own_routes)
        elif decision is None and open_model and self._router is not None:
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
            body_changed=own_routes is not None,
        )
        set_headers = plan.set_headers
        pinned_state: str | None = None
        if pins is not None and key is not None:
            if decision is None:
                pins.remember(key, plan.decision)
                pinned_state = AFFINITY_NEW
            else:
                pinned_state = AFFINITY_PINNED
            set_headers = (*set_headers, (DECISION_AFFINITY, pinned_state))
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
        return messages.body_response(set_headers, plan.remove_headers, plan.body)

    def _on_response_headers(self, msg: HttpHeaders) -> ProcessingResponse:
        headers = messages.header_map(msg)
        context = TranslationContext.from_header(headers.get(TRANSLATE_HEADER))
        if context is None:
            # Nothing to translate: the route was picked on a client's forged
            # header before it was stripped. Leave the body alone.
            return messages.response_headers_response()
        self._api = context.client
        remove = [TRANSLATE_HEADER]
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
        status = _status(headers)
        created = int(time.time())
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
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
        if media_type == "application/json" or media_type.endswith("+json"):
            self._response = _ResponseTranslation(context, status, created)
            return messages.response_headers_response(
                remove_headers=remove, body_mode=ResponseBodyMode.BUFFERED
            )
        return messages.response_headers_response(remove_headers=remove)

    def _on_response_body(self, msg: HttpBody) -> ProcessingResponse:
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
        return messages.immediate_response(
            exc.status, error_body(self._api, exc), exc.headers, details=exc.code
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
