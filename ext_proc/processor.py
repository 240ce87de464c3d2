"""The per-request state machine: request headers, then body, then a response.

One ``RequestProcessor`` lives for one ext_proc stream (one HTTP request).
``handle`` is a coroutine because some phases wait on I/O (the preference
router); phases that do not, never suspend. It never raises: every outcome is
a ProcessingResponse, so Envoy always gets an answer and the client always
gets JSON in its own API's shape.
"""

from __future__ import annotations

import logging

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyResponse,
    HeadersResponse,
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
    TrailersResponse,
)

from ext_proc import messages
from ext_proc.endpoints import Endpoint, classify, client_api, models_listing
from ext_proc.errors import GatewayError, error_body
from ext_proc.headers import INTERNAL_PREFIX
from ext_proc.mutate import parse_body, plan_request, requested_model
from ext_proc.providers import WireAPI
from ext_proc.resolve import AUTO_MODELS, RoutingTable
from ext_proc.router import RouteChoice
from ext_proc.router.service import ConfiguredRouter

__all__ = ["RequestProcessor"]

log = logging.getLogger("archway.processor")


class RequestProcessor:
    __slots__ = ("_api", "_endpoint", "_headers", "_router", "_table")

    def __init__(self, table: RoutingTable, router: ConfiguredRouter | None = None) -> None:
        # The table is captured per request, so a config reload never changes
        # the rules under a request already in flight.
        self._table = table
        self._router = router
        self._api = WireAPI.OPENAI
        self._endpoint: Endpoint | None = None
        self._headers: dict[str, str] = {}

    async def handle(self, request: ProcessingRequest) -> ProcessingResponse:
        phase = request.WhichOneof("request")
        try:
            if phase == "request_headers":
                return self._on_request_headers(request.request_headers)
            if phase == "request_body":
                return await self._on_request_body(request.request_body)
            return _pass_through(phase)
        except GatewayError as exc:
            return self._error(exc)
        except Exception:
            # Never a traceback to the client and never a hung stream.
            log.exception("unexpected error while processing %s", phase)
            return self._error(
                GatewayError(500, "Archway failed to process this request.", code="internal_error")
            )

    def _on_request_headers(self, msg: HttpHeaders) -> ProcessingResponse:
        headers = messages.header_map(msg)
        path = headers.get(":path", "/")
        self._api = client_api(path)
        endpoint = classify(headers.get(":method", "GET"), path)
        if endpoint is Endpoint.MODELS:
            api = WireAPI.ANTHROPIC if "anthropic-version" in headers else WireAPI.OPENAI
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
        choice = await self._preference_route(self._endpoint, msg.body)
        plan = plan_request(
            self._table,
            self._endpoint,
            self._headers,
            msg.body,
            route=choice.route if choice is not None else None,
            route_score=choice.score if choice is not None else None,
        )
        if log.isEnabledFor(logging.DEBUG):
            d = plan.decision
            log.debug(
                "routed requested=%r -> %s via %s%s (cluster %s)",
                d.requested,
                d.model,
                d.resolution.value,
                f" ({d.route})" if d.route else "",
                d.upstream.cluster,
            )
        return messages.body_response(plan.set_headers, plan.remove_headers, plan.body)

    async def _preference_route(self, endpoint: Endpoint, body: bytes) -> RouteChoice | None:
        """The preference router's route when the client left the model open;
        ``None`` (no router asked) for explicit models and aliases."""
        if self._router is None:
            return None
        # A bad body raises here just as plan_request would: the same 4xx.
        parsed = parse_body(self._headers, body)
        requested = requested_model(parsed)
        if requested is not None and requested.strip().lower() not in AUTO_MODELS:
            return None
        return await self._router.decide(parsed, endpoint.api)

    def _error(self, exc: GatewayError) -> ProcessingResponse:
        return messages.immediate_response(
            exc.status, error_body(self._api, exc), exc.headers, details=exc.code
        )


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
