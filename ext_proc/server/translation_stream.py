"""The translation stream: the response of one request whose body was
translated, or whose usage is counted.

Envoy's route enables the response-translation filter only on requests that
carry ``TRANSLATE_HEADER`` (or ``USAGE_HEADER``), and echoes those headers onto
the response, where this processor reads the direction and the usage ticket.
It asks for the body as the response needs: streamed for SSE (each chunk
rewritten, or passed on, as it arrives), buffered for JSON and for errors
(rewritten whole, in the client's shape). A ``ResponseMeter`` reads the
provider's bytes on the way and reports usage once the answer ends.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from ext_proc.access import gate
from ext_proc.access.gate import USAGE_HEADER, Ticket
from ext_proc.apis import WireAPI
from ext_proc.errors import GatewayError
from ext_proc.headers import DECISION_MODEL, DECISION_PROVIDER, TRANSLATE_HEADER
from ext_proc.routing.resolve import RoutingTable
from ext_proc.server import messages
from ext_proc.server.metering import ResponseMeter
from ext_proc.server.modes import BodyMode
from ext_proc.server.processor import internal_error
from ext_proc.state.process import SharedState, process_state
from ext_proc.telemetry import observe
from ext_proc.telemetry.observe import RequestTelemetry
from ext_proc.translate import (
    StreamTranslator,
    TranslationContext,
    Translator,
    context_from_header,
    translate_response,
)
from ext_proc.translate.sse import SSEError

__all__ = ["TranslationProcessor", "shared_state"]

_SSE_TYPE = "text/event-stream"


class _ResponseTranslation:
    """The response side of one translated request."""

    __slots__ = ("context", "created", "status", "stream", "translator")

    def __init__(
        self,
        translator: Translator,
        context: TranslationContext,
        status: int,
        created: int,
        stream: StreamTranslator | None = None,
    ) -> None:
        self.translator = translator
        self.context = context
        self.status = status
        self.created = created
        """OpenAI's ``created``; Anthropic responses carry no timestamp."""
        self.stream = stream
        """Set for a streamed (SSE) body; ``None`` for a buffered JSON one."""


def shared_state(table: RoutingTable | None) -> SharedState:
    """This process's pins and counters, for ``table``'s config."""
    if table is None:
        return process_state(None, 10_000, observe.shared_state_failed)
    return process_state(
        table.config.access.redis_url,
        table.config.affinity.max_entries,
        observe.shared_state_failed,
    )


class TranslationProcessor:
    """The response-translation filter's stream for one response."""

    __slots__ = ("_api", "_headers", "_meter", "_response", "_table", "_trace_context")

    def __init__(
        self,
        table: RoutingTable | None = None,
        *,
        trace_context: Mapping[str, str] | None = None,
    ) -> None:
        self._table = table
        """Where counters live (a ticket's limits are settled there)."""
        self._trace_context = trace_context
        self._api = WireAPI.OPENAI
        """The client's API, for errors: known once the response headers name it."""
        self._response: _ResponseTranslation | None = None
        self._meter: ResponseMeter | None = None
        self._headers: dict[str, str] = {}

    async def handle(self, request: ProcessingRequest) -> ProcessingResponse:
        phase = request.WhichOneof("request")
        try:
            if phase == "response_body":
                return await self._on_response_body(request.response_body)
            if phase == "response_headers":
                return await self._on_response_headers(request.response_headers)
            return messages.pass_through(phase)
        except GatewayError as exc:
            return self._error(exc)
        except Exception:
            return self._error(internal_error(phase))

    async def _on_response_headers(self, msg: HttpHeaders) -> ProcessingResponse:
        headers = messages.header_map(msg)
        found = context_from_header(headers.get(TRANSLATE_HEADER))
        ticket_value = headers.get(USAGE_HEADER)
        if found is None and ticket_value is None:
            # Nothing to translate or count: the route was picked on a client's
            # forged header before it was stripped. Leave the body alone.
            return messages.response_headers_response()
        ticket = Ticket.from_header(ticket_value)
        # These name the decision (echoed by the route) and carry Envoy's trace context.
        self._headers = headers
        remove = [TRANSLATE_HEADER] if found is not None else []
        if ticket_value is not None:
            remove.append(USAGE_HEADER)
        status = _status(headers)
        if (msg.end_of_stream or status >= 300) and ticket is not None and ticket.counters:
            # No answer to count: what the request was estimated at is given back.
            await gate.settle(shared_state(self._table), ticket, None, refund=True)
        if found is None:
            return self._meter_native(headers, ticket, remove, msg.end_of_stream or status >= 300)
        translator, context = found
        self._api = context.client
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
            self._response = _ResponseTranslation(translator, context, status, created)
            return messages.response_headers_response(
                [("content-type", "application/json")],
                remove,
                body_mode=BodyMode.BUFFERED,
            )
        if media_type == _SSE_TYPE:
            stream = translator.stream(context, created=created)
            self._response = _ResponseTranslation(translator, context, status, created, stream)
            # The translated stream has another length; Envoy sends it chunked.
            remove.append("content-length")
            return messages.response_headers_response(
                remove_headers=remove, body_mode=BodyMode.STREAMED
            )
        if _is_json(media_type):
            self._response = _ResponseTranslation(translator, context, status, created)
            return messages.response_headers_response(
                remove_headers=remove, body_mode=BodyMode.BUFFERED
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
        mode = BodyMode.STREAMED if streamed else BodyMode.BUFFERED
        return messages.response_headers_response(remove_headers=remove, body_mode=mode)

    async def _on_response_body(self, msg: HttpBody) -> ProcessingResponse:
        meter = self._meter
        if meter is None:
            return self._translate_body(msg)
        meter.feed(msg.body)
        if self._response is not None:
            response = self._translate_body(msg)
        else:
            response = messages.pass_through("response_body")
        if msg.end_of_stream or meter.finished:
            self._meter = None
            report = meter.finish()
            observe.usage_reported(report, self._trace_context, self._headers)
            if meter.ticket is not None:
                await gate.settle(shared_state(self._table), meter.ticket, report.usage)
            messages.set_metadata(response, report.log_fields())
        return response

    def _translate_body(self, msg: HttpBody) -> ProcessingResponse:
        translation = self._response
        if translation is None:
            return messages.pass_through("response_body")
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
            body = translation.translator.error(translation.status, msg.body)
        else:
            body = translate_response(
                translation.translator, translation.context, msg.body, created=translation.created
            )
        return messages.response_body_response(body, [("content-length", str(len(body)))])

    def _error(self, exc: GatewayError) -> ProcessingResponse:
        # Counted as an error answered, not as a failed request: routing
        # already counted the request.
        RequestTelemetry().failed(exc, before_routing=False)
        return messages.error_response(self._api, exc)


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
