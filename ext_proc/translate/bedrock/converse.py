"""What every Converse translator shares: the endpoint paths, stop reasons,
usage, and reading the stream's frames as events or failures. The pieces of a
request both client APIs build live in ``request_parts``.

Converse names (``stopReason``, ``inputTokens``...) appear only in this package;
the client-side shapes come from the OpenAI and Anthropic translators.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ext_proc.errors import GatewayError
from ext_proc.translate.common import as_dict, chat_usage
from ext_proc.translate.eventstream import EventStreamDecoder, EventStreamError, Message

__all__ = [
    "ANTHROPIC_STOP_REASONS",
    "OPENAI_FINISH_REASONS",
    "STREAM_CONTENT_TYPE",
    "ConverseEvents",
    "ConverseRequest",
    "ConverseStream",
    "StreamEvent",
    "StreamFailure",
    "anthropic_usage",
    "converse_path",
    "finish_reason",
    "matched_stop_sequence",
    "openai_usage",
    "read_stream_message",
    "stop_reason",
    "tool_input_json",
]

STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"

OPENAI_FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}
"""Converse ``stopReason`` -> OpenAI ``finish_reason``; anything else is ``stop``."""

ANTHROPIC_STOP_REASONS: dict[str, str] = {
    "end_turn": "end_turn",
    "stop_sequence": "stop_sequence",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "model_context_window_exceeded",
    "tool_use": "tool_use",
    "content_filtered": "refusal",
    "guardrail_intervened": "refusal",
}
"""Converse ``stopReason`` -> Anthropic ``stop_reason``; anything else is ``end_turn``."""

# Status codes of the exceptions ConverseStream sends mid-stream, as the same
# exceptions carry when Converse answers with them outright; except that a model
# failing mid-stream (424 on Bedrock) is the server's fault, not the request's,
# and the client's error type should say so.
_STREAM_EXCEPTION_STATUS = {
    "internalServerException": 500,
    "modelStreamErrorException": 500,
    "validationException": 400,
    "throttlingException": 429,
    "serviceUnavailableException": 503,
}


@dataclass(frozen=True, slots=True)
class ConverseRequest:
    """A translated request: where it goes and what it carries."""

    model_id: str
    stream: bool
    body: dict[str, Any]
    include_usage: bool = False
    """An OpenAI client asked for ``stream_options.include_usage``."""

    @property
    def path(self) -> str:
        return converse_path(self.model_id, stream=self.stream)


def converse_path(model_id: str, *, stream: bool) -> str:
    """``/model/{modelId}/converse[-stream]``; the id percent-encoded, since
    inference profile ARNs hold ``/`` and ``:``."""
    if not model_id:
        raise GatewayError(
            400, "The Bedrock model id is empty.", code="invalid_request", param="model"
        )
    action = "converse-stream" if stream else "converse"
    return f"/model/{quote(model_id, safe='')}/{action}"


# --- answers -----------------------------------------------------------------------


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_usage(usage: object) -> dict[str, Any]:
    """Converse counts cache reads and writes apart from ``inputTokens``; OpenAI inside."""
    usage = as_dict(usage)
    cached = _count(usage, "cacheReadInputTokens")
    prompt = _count(usage, "inputTokens") + _count(usage, "cacheWriteInputTokens") + cached
    return chat_usage(prompt, _count(usage, "outputTokens"), cached)


def anthropic_usage(usage: object) -> dict[str, Any]:
    """Converse and Anthropic both count cache reads and writes apart: a renaming."""
    usage = as_dict(usage)
    return {
        "input_tokens": _count(usage, "inputTokens"),
        "output_tokens": _count(usage, "outputTokens"),
        "cache_read_input_tokens": _count(usage, "cacheReadInputTokens"),
        "cache_creation_input_tokens": _count(usage, "cacheWriteInputTokens"),
    }


def finish_reason(stop_reason: object) -> str:
    return (
        OPENAI_FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    )


def stop_reason(converse_reason: object) -> str:
    if isinstance(converse_reason, str):
        return ANTHROPIC_STOP_REASONS.get(converse_reason, "end_turn")
    return "end_turn"


def matched_stop_sequence(fields: object) -> str | None:
    """The stop sequence that ended the answer, where the model says (Claude on
    Bedrock does, in ``additionalModelResponseFields``)."""
    value = as_dict(fields).get("stop_sequence")
    return value if isinstance(value, str) and value else None


def tool_input_json(value: object) -> dict[str, Any]:
    """A ``toolUse.input`` as the object both client APIs expect."""
    return value if isinstance(value, dict) else {"value": value}


# --- stream ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One ConverseStream event: ``messageStart``, ``contentBlockDelta``, ``metadata``..."""

    kind: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamFailure:
    """The stream failed: an exception event, an error frame, or unreadable bytes."""

    status: int
    code: str
    message: str

    def as_gateway_error(self) -> GatewayError:
        return GatewayError(self.status, self.message, code=self.code)


def read_stream_message(message: Message) -> StreamEvent | StreamFailure | None:
    """What one frame says; ``None`` for a frame that carries nothing for a client."""
    message_type = message.header(":message-type")
    if message_type == "event":
        kind = message.header(":event-type")
        body = _json_object(message.payload)
        if kind is None or body is None:
            return StreamFailure(502, "invalid_event_stream", "Bedrock sent an unreadable event.")
        return StreamEvent(kind, body)
    if message_type == "exception":
        kind = message.header(":exception-type") or "exception"
        text = as_dict(_json_object(message.payload)).get("message")
        return StreamFailure(
            _STREAM_EXCEPTION_STATUS.get(kind, 500),
            kind,
            text if isinstance(text, str) and text else f"Bedrock reported {kind} mid-stream.",
        )
    if message_type == "error":
        code = message.header(":error-code") or "error"
        text = message.header(":error-message") or f"Bedrock reported {code} mid-stream."
        return StreamFailure(500, code, text)
    return None


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(payload) if payload else {}
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


class ConverseEvents:
    """Body chunks in, ConverseStream events out; a corrupt stream ends in one failure."""

    __slots__ = ("_decoder", "_failed")

    def __init__(self) -> None:
        self._decoder = EventStreamDecoder()
        self._failed = False

    def feed(self, chunk: bytes) -> list[StreamEvent | StreamFailure]:
        if self._failed:
            return []
        failure: list[StreamEvent | StreamFailure] = []
        try:
            messages = self._decoder.feed(chunk)
        except EventStreamError as error:
            self._failed = True
            messages = error.decoded
            failure.append(
                StreamFailure(502, "invalid_event_stream", f"Bedrock's stream is bad: {error}")
            )
        return [e for e in map(read_stream_message, messages) if e is not None] + failure

    def finish(self) -> list[StreamEvent | StreamFailure]:
        if self._failed:
            return []
        try:
            self._decoder.finish()
        except EventStreamError as error:
            self._failed = True
            return [StreamFailure(502, "invalid_event_stream", f"Bedrock's stream is bad: {error}")]
        return []


class ConverseStream:
    """What both ConverseStream translators share: Bedrock's body chunks in, the
    client's SSE bytes out, nothing more once the stream has ended (``_done``).

    A subclass writes an event (``_event``), a failure (``_failure``), and how a
    stream that stops before it ended is closed (``_end``).
    """

    __slots__ = ("_done", "_events")

    def __init__(self) -> None:
        self._events = ConverseEvents()
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self._events.feed(chunk))

    def finish(self) -> bytes:
        out = bytearray(self._translate(self._events.finish()))
        if not self._done:
            self._end(out)
        return bytes(out)

    def _translate(self, events: list[StreamEvent | StreamFailure]) -> bytes:
        out = bytearray()
        for event in events:
            if self._done:
                break
            if isinstance(event, StreamFailure):
                self._failure(event, out)
            else:
                self._event(event, out)
        return bytes(out)

    def _event(self, event: StreamEvent, out: bytearray) -> None:
        raise NotImplementedError

    def _failure(self, failure: StreamFailure, out: bytearray) -> None:
        raise NotImplementedError

    def _end(self, out: bytearray) -> None:
        raise NotImplementedError
