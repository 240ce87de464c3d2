"""The translation stream: the response of one request whose body was translated.

Envoy's route enables the response-translation filter only on requests that
carry ``TRANSLATE_HEADER``, and echoes that header onto the response, where
this processor reads the direction. It asks for the body as the response
needs: streamed for SSE (each chunk rewritten as it arrives), buffered for
JSON and for errors (rewritten whole, in the client's shape).
"""

from __future__ import annotations

import time

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from ext_proc.apis import WireAPI
from ext_proc.errors import GatewayError
from ext_proc.headers import TRANSLATE_HEADER
from ext_proc.server import messages
from ext_proc.server.modes import BodyMode
from ext_proc.server.processor import internal_error
from ext_proc.telemetry.observe import RequestTelemetry
from ext_proc.translate import (
    StreamTranslator,
    TranslationContext,
    Translator,
    context_from_header,
    translate_response,
)
from ext_proc.translate.sse import SSEError

__all__ = ["TranslationProcessor"]

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


class TranslationProcessor:
    """The response-translation filter's stream for one response."""

    __slots__ = ("_api", "_response")

    def __init__(self) -> None:
        self._api = WireAPI.OPENAI
        """The client's API, for errors: known once the response headers name it."""
        self._response: _ResponseTranslation | None = None

    async def handle(self, request: ProcessingRequest) -> ProcessingResponse:
        phase = request.WhichOneof("request")
        try:
            if phase == "response_body":
                return self._on_response_body(request.response_body)
            if phase == "response_headers":
                return self._on_response_headers(request.response_headers)
            return messages.pass_through(phase)
        except GatewayError as exc:
            return self._error(exc)
        except Exception:
            return self._error(internal_error(phase))

    def _on_response_headers(self, msg: HttpHeaders) -> ProcessingResponse:
        headers = messages.header_map(msg)
        found = context_from_header(headers.get(TRANSLATE_HEADER))
        if found is None:
            # Nothing to translate: the route was picked on a client's forged
            # header before it was stripped. Leave the body alone.
            return messages.response_headers_response()
        translator, context = found
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
        if media_type == "application/json" or media_type.endswith("+json"):
            self._response = _ResponseTranslation(translator, context, status, created)
            return messages.response_headers_response(
                remove_headers=remove, body_mode=BodyMode.BUFFERED
            )
        return messages.response_headers_response(remove_headers=remove)

    def _on_response_body(self, msg: HttpBody) -> ProcessingResponse:
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


def _status(headers: dict[str, str]) -> int:
    try:
        return int(headers.get(":status", "200"))
    except ValueError:
        return 200
