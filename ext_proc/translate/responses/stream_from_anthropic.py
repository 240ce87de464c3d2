"""An Anthropic Messages SSE stream as a Responses SSE stream.

Text blocks feed one message item until a ``tool_use`` block begins; each
``tool_use`` block is a function call item, closed by its
``content_block_stop``. Thinking blocks are the model's own and are not
streamed. ``message_stop`` completes the Response; an ``error`` event, or a
stream that ends before ``message_stop``, fails it.
"""

from __future__ import annotations

from typing import Any

from ext_proc.translate.common import as_dict, dumps
from ext_proc.translate.responses.output import anthropic_outcome, usage_from_anthropic
from ext_proc.translate.responses.request import ResponseContext
from ext_proc.translate.responses.stream_base import ResponsesStream

__all__ = ["StreamTranslator"]


class StreamTranslator(ResponsesStream):
    """Anthropic Messages SSE in, Responses SSE out."""

    __slots__ = ("_stop_reason",)

    def __init__(self, ctx: ResponseContext) -> None:
        super().__init__(ctx)
        self._stop_reason: str | None = None

    def _payload(self, payload: dict[str, Any] | None, out: bytearray) -> None:
        if payload is not None:  # Anthropic never sends [DONE]; one that did ends nothing
            self._event(payload, out)

    def _event(self, payload: dict[str, Any], out: bytearray) -> None:
        writer = self._writer
        kind = payload.get("type")
        index = payload.get("index")
        if kind == "content_block_delta":
            delta = as_dict(payload.get("delta"))
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    writer.text(out, text)
            elif delta_type == "input_json_delta":
                partial = delta.get("partial_json")
                if isinstance(partial, str):
                    writer.call_arguments(out, index, partial)
        elif kind == "content_block_start":
            block = as_dict(payload.get("content_block"))
            if block.get("type") == "text" and block.get("text"):
                writer.text(out, str(block["text"]))
            elif block.get("type") == "tool_use":
                writer.call_start(out, index, str(block.get("id") or ""), str(block.get("name")))
                tool_input = block.get("input")
                if tool_input:
                    writer.call_arguments(out, index, dumps(tool_input))
        elif kind == "content_block_stop":
            if writer.has_call(index):
                writer.close_call(out, index)
        elif kind == "message_start":
            message = as_dict(payload.get("message"))
            self._usage.update(as_dict(message.get("usage")))
            writer.start(out, message.get("model"))
        elif kind == "message_delta":
            usage = as_dict(payload.get("usage"))
            self._usage.update({k: v for k, v in usage.items() if v is not None})
            stop_reason = as_dict(payload.get("delta")).get("stop_reason")
            if isinstance(stop_reason, str):
                self._stop_reason = stop_reason
        elif kind == "message_stop":
            outcome = anthropic_outcome(self._stop_reason)
            writer.finish(out, outcome, usage_from_anthropic(self._usage))
        elif kind == "error":
            error = as_dict(payload.get("error"))
            message = error.get("message") or "The model provider reported an error mid-stream."
            writer.fail(out, str(message))
        # ping and unknown events carry nothing for a Responses client.
