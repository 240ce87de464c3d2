"""The routing stream: one LLM request's headers, then its buffered body.

The headers say which endpoint the request is for (``GET /v1/models`` is
answered at once); the body is parsed once, ``routing.decide`` decides where
it goes (awaiting the preference router only when the request leaves the
model open and no session pin answers), and ``routing.plan`` says how to
rewrite it. ``handle`` suspends only on that router call.

In one-message mode (``archway.ext_proc_messages: one``) Envoy sends no headers
message: the body comes first, carrying the headers the decision reads as
attributes, and the answer's header changes go back as dynamic metadata that
Envoy's Lua filter applies (``ext_proc.deploy.one_message``).

Under Envoy Gateway one ext_proc filter does both jobs, so this stream also
sees its response; those phases go to a ``TranslationProcessor`` of its own, as
they would on the translation filter's stream (and as on a stream from an
Envoy config written before the translation filter's streams were tagged).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from ext_proc.access import gate
from ext_proc.access.gate import USAGE_HEADER, Ticket
from ext_proc.access.policy import Client
from ext_proc.apis import Endpoint, WireAPI, client_api
from ext_proc.config.types import ProviderConfig
from ext_proc.errors import GatewayError
from ext_proc.headers import AFFINITY_NEW, AFFINITY_PINNED, INTERNAL_PREFIX
from ext_proc.router.service import ConfiguredRouter
from ext_proc.routing import affinity
from ext_proc.routing.body import parse_request
from ext_proc.routing.decide import Decision, Look, decide, look
from ext_proc.routing.endpoints import classify, empty_body, listing_api, models_listing
from ext_proc.routing.plan import continued_response, plan_request
from ext_proc.routing.resolve import RoutingDecision, RoutingTable, chain_providers
from ext_proc.server import messages
from ext_proc.server.conversations import Conversations
from ext_proc.server.processor import internal_error
from ext_proc.server.translation_stream import TranslationProcessor, shared_state
from ext_proc.telemetry import observe
from ext_proc.telemetry.observe import RequestTelemetry
from ext_proc.translate.responses.translators import stored_response_id

__all__ = ["RoutingProcessor"]

log = logging.getLogger("archway.processor")

_RESPONSE_PHASES = frozenset({"response_headers", "response_body"})


class RoutingProcessor:
    """The routing filter's stream for one request."""

    __slots__ = (
        "_api",
        "_client",
        "_conversations",
        "_endpoint",
        "_headers",
        "_one_message",
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
        conversations: Conversations | None = None,
    ) -> None:
        # The table is captured per request, so a config reload never changes
        # the rules under a request already in flight.
        self._table = table
        self._router = router
        self._conversations = conversations or Conversations(None)
        self._api = WireAPI.OPENAI
        self._endpoint: Endpoint | None = None
        self._headers: dict[str, str] = {}
        self._one_message = False
        self._response: TranslationProcessor | None = None
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
                if self._endpoint is None:
                    headers = messages.attribute_headers(request)
                    if headers is not None:
                        self._one_message = True
                        listing = self._begin(headers)
                        if listing is not None:
                            return listing
                return await self._on_request_body(request.request_body)
            if phase in _RESPONSE_PHASES:
                response = self._response
                if response is None:
                    response = self._response = TranslationProcessor(
                        self._table, conversations=self._conversations
                    )
                return await response.handle(request)
            return messages.pass_through(phase)
        except GatewayError as exc:
            return self._error(exc)
        except Exception:
            return self._error(internal_error(phase))

    def _on_request_headers(self, msg: HttpHeaders) -> ProcessingResponse:
        headers = messages.header_map(msg)
        listing = self._begin(headers)
        if listing is not None:
            return listing
        if msg.end_of_stream:
            raise empty_body()
        # Internal routing headers come only from Archway: a client must never
        # pick a cluster or fake a decision by sending them.
        forged = [name for name in headers if name.startswith(INTERNAL_PREFIX)]
        return messages.headers_response(remove_headers=forged)

    def _begin(self, headers: dict[str, str]) -> ProcessingResponse | None:
        """What the request line and headers decide alone: the client key, the
        endpoint (404/405), and the model listing, which is answered here."""
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
            self._telemetry.answered()
            listing = models_listing(self._table, listing_api(headers))
            return messages.immediate_response(200, listing)
        self._endpoint = endpoint
        self._headers = headers
        return None

    async def _on_request_body(self, msg: HttpBody) -> ProcessingResponse:
        endpoint = self._endpoint
        if endpoint is None:
            raise GatewayError(400, "Request body arrived before its headers.", code="bad_request")
        table, headers = self._table, self._headers
        parsed = parse_request(headers, msg.body, endpoint.api)
        seen = look(table, parsed.fields, headers)
        if seen.session is not None:
            seen = seen._replace(
                pinned=await affinity.recall(
                    shared_state(table), seen.session, table, seen.requested
                )
            )
        choice = None
        if seen.asks_router and self._router is not None and endpoint.is_chat:
            choice = await self._telemetry.router_call(
                self._router.decide(parsed.data, endpoint.api, seen.router_routes)
            )
        decision = decide(table, seen, choice)
        if decision.affinity == AFFINITY_NEW:
            decision = await self._pin(seen, decision)
        history: list[dict[str, Any]] = []
        chain: tuple[ProviderConfig, ...] = ()
        if endpoint.api is WireAPI.RESPONSES:
            chain = chain_providers(table, decision.target)
            previous = continued_response(endpoint, parsed.fields, chain)
            if previous is not None:
                history = await self._conversations.history(previous)
        plan = plan_request(
            decision,
            parsed,
            endpoint,
            headers,
            table.config.providers,
            history=history,
            chain=chain,
        )
        set_headers = plan.set_headers
        metadata: dict[str, str] = {}
        if table.config.access.meters or self._client is not None:
            set_headers = await self._account(plan.decision, msg.body, set_headers, metadata)
        translation = plan.translation
        if translation is not None and translation.conversation is not None:
            # Only once the request is admitted: a refused one leaves no turn behind.
            response_id = stored_response_id(translation)
            if response_id is not None:
                await self._conversations.begin(response_id, translation.conversation)
        self._telemetry.routed(table, plan, decision.affinity)
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
        if self._one_message:
            response = messages.decision_metadata_response(
                set_headers, plan.remove_headers, plan.remove_prefixes, plan.body
            )
        else:
            response = messages.body_response(set_headers, plan.remove_headers, plan.body)
        return messages.set_metadata(response, metadata)

    async def _pin(self, seen: Look, decision: Decision) -> Decision:
        """Claim the new session's pin; when another worker or gateway pinned the
        session first, follow its decision instead."""
        assert seen.session is not None
        table = self._table
        winner = await affinity.claim(
            shared_state(table),
            seen.session,
            decision.target,
            table.config.affinity.ttl_s,
            table,
            seen.requested,
        )
        return decision if winner is None else Decision(winner, affinity=AFFINITY_PINNED)

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
                shared_state(self._table),
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

    def _error(self, exc: GatewayError) -> ProcessingResponse:
        self._telemetry.failed(exc, before_routing=True)
        if self._client is not None:
            observe.client_answered(self._client.name, exc.code)
        return messages.error_response(self._api, exc)
