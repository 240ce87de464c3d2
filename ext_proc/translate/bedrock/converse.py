"""What every Converse translator shares: the endpoint paths, media formats,
stop reasons, usage, and reading the stream's frames as events or failures.

Converse names (``stopReason``, ``inputTokens``...) appear only in this package;
the client-side shapes come from the OpenAI and Anthropic translators.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ext_proc.errors import GatewayError
from ext_proc.translate.common import as_dict, split_data_url, unsupported
from ext_proc.translate.eventstream import EventStreamDecoder, EventStreamError, Message

__all__ = [
    "ANTHROPIC_STOP_REASONS",
    "OPENAI_FINISH_REASONS",
    "STREAM_CONTENT_TYPE",
    "ConverseEvents",
    "ConverseRequest",
    "StreamEvent",
    "StreamFailure",
    "anthropic_usage",
    "converse_path",
    "document_block",
    "image_block",
    "openai_usage",
    "read_stream_message",
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

_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html",
    "text/plain": "txt",
    "text/markdown": "md",
}

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


# --- media -------------------------------------------------------------------------


def image_block(media_type: str, data: str, where: str) -> dict[str, Any]:
    """An inline image; Converse takes the bytes (base64 in JSON) and a format name."""
    image_format = _IMAGE_FORMATS.get(media_type.lower())
    if image_format is None:
        raise unsupported(
            where, f"{where}: image type {media_type!r} is not one of png, jpeg, gif, webp."
        )
    return {"image": {"format": image_format, "source": {"bytes": _checked_base64(data, where)}}}


def image_from_url(url: object, where: str) -> dict[str, Any]:
    """An OpenAI ``image_url``: only a base64 data URL can be sent; Converse fetches nothing."""
    inline = split_data_url(url) if isinstance(url, str) else None
    if inline is None:
        raise unsupported(
            where,
            f"{where}: Bedrock takes images inline only; send a base64 data URL, not a link.",
        )
    return image_block(inline[0], inline[1], where)


def document_block(media_type: str, data: str, name: object, where: str) -> dict[str, Any]:
    document_format = _DOCUMENT_FORMATS.get(media_type.lower())
    if document_format is None:
        raise unsupported(
            where,
            f"{where}: document type {media_type!r} is not one Bedrock reads "
            f"({', '.join(sorted(set(_DOCUMENT_FORMATS.values())))}).",
        )
    return {
        "document": {
            "format": document_format,
            "name": _document_name(name),
            "source": {"bytes": _checked_base64(data, where)},
        }
    }


def _document_name(name: object) -> str:
    """Converse allows letters, digits, single spaces, hyphens, parentheses and
    square brackets in a document name; anything else becomes a space."""
    if not isinstance(name, str):
        return "document"
    stem = name.rsplit(".", 1)[0] if "." in name else name
    kept = "".join(c if c.isalnum() or c in "-()[]" else " " for c in stem)
    cleaned = " ".join(kept.split())[:200]
    return cleaned or "document"


def _checked_base64(data: str, where: str) -> str:
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError(
            400, f"{where}: the inline data is not valid base64.", code="invalid_request"
        ) from None
    return data


# --- answers -----------------------------------------------------------------------


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_usage(usage: object) -> dict[str, Any]:
    """Converse counts cache reads and writes apart from ``inputTokens``; OpenAI inside."""
    usage = as_dict(usage)
    cached = _count(usage, "cacheReadInputTokens")
    prompt = _count(usage, "inputTokens") + _count(usage, "cacheWriteInputTokens") + cached
    completion = _count(usage, "outputTokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


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


# --- request parts both client APIs share ---------------------------------------------

NO_TOOL_CHOICE = "none"


def tool_config(
    tools: list[dict[str, Any]], choice: dict[str, Any] | str | None, messages: list[Any]
) -> dict[str, Any] | None:
    """``toolConfig`` for translated tool specs and a Converse ``toolChoice``.

    Converse has no "none" choice. Leaving the tools out honours it, unless the
    conversation already holds tool calls: Bedrock then requires ``toolConfig``,
    and keeping it would let the model call a tool it was told not to.
    """
    if choice == NO_TOOL_CHOICE:
        if _has_tool_blocks(messages):
            raise unsupported(
                "tool_choice",
                "Bedrock has no tool_choice 'none', and this conversation holds tool calls, "
                "so its tools cannot be left out; send 'auto' or drop the tools.",
            )
        return None
    if not tools:
        return None
    config: dict[str, Any] = {"tools": tools}
    if isinstance(choice, dict):
        config["toolChoice"] = choice
    return config


def _has_tool_blocks(messages: list[Any]) -> bool:
    return any(
        "toolUse" in block or "toolResult" in block
        for message in messages
        for block in message.get("content", ())
    )


def tool_spec(name: object, description: object, schema: object, strict: bool) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise GatewayError(400, "Every tool needs a name.", code="invalid_request", param="tools")
    spec: dict[str, Any] = {"name": name}
    if isinstance(description, str) and description:
        spec["description"] = description
    spec["inputSchema"] = {
        "json": schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
    }
    if strict:
        spec["strict"] = True
    return {"toolSpec": spec}


def output_config(schema: object, name: object, where: str) -> dict[str, Any]:
    """Structured output: Converse takes the JSON schema as a string."""
    if not isinstance(schema, dict):
        raise unsupported(where, f"{where}: the JSON schema is missing.")
    definition: dict[str, Any] = {"schema": json.dumps(schema, separators=(",", ":"))}
    definition["name"] = name if isinstance(name, str) and name else "response"
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}


def tool_result_part(text: str) -> dict[str, Any]:
    """A tool's text output; a JSON object goes as Converse's ``json`` member,
    which models that distinguish the two read as structured data."""
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            return {"json": parsed}
    return {"text": text}


def append_turn(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Converse wants user and assistant to alternate: same-role turns merge."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def inference_config(
    max_tokens: object, temperature: object, top_p: object, stop: list[str]
) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if _is_int(max_tokens):
        config["maxTokens"] = max_tokens
    if _is_number(temperature):
        config["temperature"] = temperature
    if _is_number(top_p):
        config["topP"] = top_p
    if stop:
        config["stopSequences"] = stop
    return config


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
