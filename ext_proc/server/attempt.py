"""Failover: each retry attempt rewritten for the fallback model it goes to.

A model with ``fallbacks`` routes to a failover cluster whose priority levels
are the model's upstream, then each fallback's. Envoy's retry policy moves one
priority down per attempt (on a connect failure, 429 or 5xx). The ext_proc
filter in that cluster's upstream filter chain opens a stream per attempt, and
``AttemptProcessor`` rewrites the attempt for its model: ``:path``,
credentials, the body's ``model``, and, when a fallback answers, the decision
headers on the response. Attempt ``n`` goes to priority ``n - 1``: Envoy's
``previous_priorities`` retry predicate never returns to a level it tried.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from ext_proc.apis import WireAPI, endpoint_for
from ext_proc.errors import GatewayError
from ext_proc.headers import (
    ATTEMPT_HEADER,
    CLIENT_PATH_HEADER,
    DECISION_FALLBACK,
    DECISION_MODEL,
    DECISION_PROVIDER,
    FALLBACK_CHAIN,
)
from ext_proc.routing.body import parse_json, with_model
from ext_proc.routing.catalog import chain_api
from ext_proc.routing.plan import upstream_headers
from ext_proc.routing.resolve import RoutingDecision, RoutingTable, resolve_named
from ext_proc.server import messages
from ext_proc.telemetry.observe import AttemptTelemetry
from ext_proc.translate.bedrock import converse_path

__all__ = ["ATTEMPT_HEADER", "AttemptProcessor"]

log = logging.getLogger("archway.failover")


class AttemptProcessor:
    """The stream of one upstream attempt of a request routed to a failover cluster.

    Never raises: a chain it cannot read (a config reloaded since the request
    began) leaves the attempt as the routing filter shaped it.
    """

    __slots__ = ("_body_has_model", "_decision", "_index", "_table", "_trace_context")

    def __init__(
        self, table: RoutingTable, *, trace_context: Mapping[str, str] | None = None
    ) -> None:
        self._table = table
        self._decision: RoutingDecision | None = None
        self._body_has_model = True
        self._index = 0
        self._trace_context = trace_context

    async def handle(self, request: ProcessingRequest) -> ProcessingResponse:
        phase = request.WhichOneof("request")
        try:
            if phase == "request_headers":
                return self._on_request_headers(request.request_headers)
            if phase == "request_body":
                return self._on_request_body(request.request_body)
            if phase == "response_headers":
                return self._on_response_headers()
        except Exception:
            log.exception("failover attempt %s: could not rewrite; sent as is", phase)
        return _unchanged(phase)

    def _on_request_headers(self, msg: HttpHeaders) -> ProcessingResponse:
        headers = messages.header_map(msg)
        chain = headers.get(FALLBACK_CHAIN, "").split()
        attempt = _attempt(headers.get(ATTEMPT_HEADER, "1"))
        if attempt <= 1 or not chain:
            return messages.attempt_headers_response((), (), retry=False)
        self._index = min(attempt, len(chain)) - 1
        try:
            decision = resolve_named(self._table, chain[self._index])
        except GatewayError as exc:
            log.warning("failover attempt %d: %s", attempt, exc.message)
            return messages.attempt_headers_response((), (), retry=False)
        self._decision = decision
        AttemptTelemetry.fallback(
            self._table, chain, self._index, decision, headers, self._trace_context
        )
        # Every header an earlier attempt set is still on the request: the path
        # and credentials are set again, and the earlier key dropped.
        # The client's API (from Envoy's copy of its path) and the chain say which
        # API the body is in: the routing filter shaped it for every attempt.
        endpoint = endpoint_for(headers.get(CLIENT_PATH_HEADER, ""))
        client = endpoint.api if endpoint is not None else WireAPI.OPENAI
        providers = [resolve_named(self._table, model).provider for model in chain]
        body_api = chain_api(providers, client)
        set_headers, remove = upstream_headers(decision, headers, body_api)
        if body_api is WireAPI.BEDROCK:
            # Converse names the model in the path, not the body: the earlier
            # attempt's path says whether it streams.
            stream = headers.get(":path", "").endswith("/converse-stream")
            path = decision.upstream.path_prefix + converse_path(
                decision.provider.model_id, stream=stream
            )
            set_headers = [(n, v) for n, v in set_headers if n != ":path"] + [(":path", path)]
            self._body_has_model = False
        log.info("failover attempt %d: %s", attempt, decision.model)
        return messages.attempt_headers_response(set_headers, remove, retry=True)

    def _on_request_body(self, msg: HttpBody) -> ProcessingResponse:
        if self._decision is None or not self._body_has_model:
            return _unchanged("request_body")
        # The same splice as the first attempt's: the body the routing filter
        # shaped reaches each fallback with only its model changed.
        new_body = with_model(parse_json(msg.body), self._decision.upstream_model)
        if new_body is None:
            return _unchanged("request_body")
        return messages.body_response(
            [("content-length", str(len(new_body)))], (), new_body, clear_route_cache=False
        )

    def _on_response_headers(self) -> ProcessingResponse:
        if self._decision is None:
            return _unchanged("response_headers")
        return messages.response_headers_response(
            [
                (DECISION_MODEL, self._decision.model),
                (DECISION_PROVIDER, self._decision.provider.provider),
                (DECISION_FALLBACK, str(self._index)),
            ]
        )


def _attempt(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 1


def _unchanged(phase: str | None) -> ProcessingResponse:
    if phase == "request_body":
        return messages.body_response((), (), None, clear_route_cache=False)
    if phase == "response_headers":
        return messages.pass_through(phase)
    return messages.headers_response()
