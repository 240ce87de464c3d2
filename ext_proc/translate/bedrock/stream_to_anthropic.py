"""ConverseStream event-stream frames as Anthropic Messages SSE events.

Converse opens a tool-use block with ``contentBlockStart`` but a text or
reasoning block with its first delta, so a block opens on first sight and
closes on ``contentBlockStop`` (or when another opens). The stop reason
(``messageStop``) comes before the usage (``metadata``): ``message_delta`` and
``message_stop`` wait for the usage, or for the end of the stream. An exception
event or a corrupt frame ends the stream with an Anthropic ``error`` event.
"""

from __future__ import annotations

from typing import Any

from ext_proc.errors import GatewayError
from ext_proc.translate.bedrock.converse import (
    ConverseStream,
    StreamEvent,
    StreamFailure,
    anthropic_usage,
    matched_stop_sequence,
    stop_reason,
)
from ext_proc.translate.common import as_dict, dumps
from ext_proc.translate.sse import encode_event

__all__ = ["StreamTranslator"]


class StreamTranslator(ConverseStream):
    """ConverseStream in, Anthropic Messages SSE out."""

    __slots__ = (
        "_blocks",
        "_id",
        "_model",
        "_next_block",
        "_open",
        "_started",
        "_stop_reason",
        "_stop_sequence",
    )

    def __init__(self, *, model: str, message_id: str) -> None:
        super().__init__()
        self._model = model
        self._id = message_id
        self._started = False
        self._blocks: dict[object, int] = {}
        """Converse ``contentBlockIndex`` -> Anthropic content block index."""
        self._next_block = 0
        self._open: tuple[int, str] | None = None
        """The Anthropic block now open, and its type."""
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None

    def _end(self, out: bytearray) -> None:
        if self._stop_reason is not None:
            self._close(out, {})
        else:
            self._error(out, 500, "Bedrock's stream ended before the answer did.")

    def _failure(self, failure: StreamFailure, out: bytearray) -> None:
        self._error(out, failure.status, failure.message)

    def _event(self, event: StreamEvent, out: bytearray) -> None:
        body = event.body
        kind = event.kind
        index = body.get("contentBlockIndex")
        if kind == "contentBlockDelta":
            self._delta(index, as_dict(body.get("delta")), out)
        elif kind == "contentBlockStart":
            use = as_dict(as_dict(body.get("start")).get("toolUse"))
            if use:
                self._start(out)
                block = {"type": "tool_use", "id": use.get("toolUseId"), "name": use.get("name")}
                self._open_block(index, {**block, "input": {}}, out)
        elif kind == "contentBlockStop":
            if self._open is not None and self._blocks.get(index) == self._open[0]:
                self._close_block(out)
        elif kind == "messageStart":
            self._start(out)
        elif kind == "messageStop":
            self._start(out)
            self._close_block(out)
            self._stop_reason = stop_reason(body.get("stopReason"))
            self._stop_sequence = matched_stop_sequence(body.get("additionalModelResponseFields"))
        elif kind == "metadata":
            self._close(out, as_dict(body.get("usage")))

    def _delta(self, index: object, delta: dict[str, Any], out: bytearray) -> None:
        self._start(out)
        text = delta.get("text")
        if isinstance(text, str):
            block = self._ensure_block(index, "text", {"type": "text", "text": ""}, out)
            if text:
                out += _delta_event(block, {"type": "text_delta", "text": text})
        elif "toolUse" in delta:
            block = self._blocks.get(index)
            partial = as_dict(delta["toolUse"]).get("input")
            if block is not None and isinstance(partial, str) and partial:
                out += _delta_event(block, {"type": "input_json_delta", "partial_json": partial})
        elif "reasoningContent" in delta:
            self._reasoning(index, as_dict(delta["reasoningContent"]), out)

    def _reasoning(self, index: object, reasoning: dict[str, Any], out: bytearray) -> None:
        if "redactedContent" in reasoning:
            block = {"type": "redacted_thinking", "data": reasoning["redactedContent"]}
            self._close_block(out)
            self._open_block(index, block, out)
            self._close_block(out)
            return
        start = {"type": "thinking", "thinking": "", "signature": ""}
        block_index = self._ensure_block(index, "thinking", start, out)
        text = reasoning.get("text")
        if isinstance(text, str) and text:
            out += _delta_event(block_index, {"type": "thinking_delta", "thinking": text})
        signature = reasoning.get("signature")
        if isinstance(signature, str) and signature:
            out += _delta_event(block_index, {"type": "signature_delta", "signature": signature})

    def _ensure_block(self, index: object, kind: str, start: dict[str, Any], out: bytearray) -> int:
        block = self._blocks.get(index)
        if self._open is not None and block == self._open[0] and self._open[1] == kind:
            return block
        self._close_block(out)
        return self._open_block(index, start, out)

    def _open_block(self, index: object, block: dict[str, Any], out: bytearray) -> int:
        self._close_block(out)
        number = self._next_block
        self._next_block += 1
        if index is not None:
            self._blocks[index] = number
        self._open = (number, block["type"])
        out += _event(
            "content_block_start",
            {"type": "content_block_start", "index": number, "content_block": block},
        )
        return number

    def _close_block(self, out: bytearray) -> None:
        if self._open is not None:
            number = self._open[0]
            out += _event("content_block_stop", {"type": "content_block_stop", "index": number})
            self._open = None

    def _start(self, out: bytearray) -> None:
        if self._started:
            return
        self._started = True
        message = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Converse tells the token counts only at the end; message_delta carries them.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        out += _event("message_start", {"type": "message_start", "message": message})

    def _close(self, out: bytearray, usage: dict[str, Any]) -> None:
        self._start(out)
        self._close_block(out)
        delta = {
            "stop_reason": self._stop_reason or "end_turn",
            "stop_sequence": self._stop_sequence,
        }
        payload = {"type": "message_delta", "delta": delta, "usage": anthropic_usage(usage)}
        out += _event("message_delta", payload)
        out += _event("message_stop", {"type": "message_stop"})
        self._done = True

    def _error(self, out: bytearray, status: int, message: str) -> None:
        kind = GatewayError(status, message, code="upstream_error").anthropic_type
        out += _event("error", {"type": "error", "error": {"type": kind, "message": message}})
        self._done = True


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return encode_event(dumps(payload), name)


def _delta_event(index: int, delta: dict[str, Any]) -> bytes:
    return _event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )
