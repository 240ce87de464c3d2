"""A ``chat.completion.chunk`` SSE stream as a Responses SSE stream.

The chat request asked for ``stream_options.include_usage``, so usage comes in
a chunk after the one with ``finish_reason``: the Response completes at
``[DONE]`` (or at the end of the stream). A stream that ends with no
``finish_reason`` was cut off, and the Response fails rather than pretend.
"""

from __future__ import annotations

from typing import Any

from ext_proc.translate.common import as_dict, as_list
from ext_proc.translate.responses.output import chat_outcome, usage_from_chat
from ext_proc.translate.responses.request import ResponseContext
from ext_proc.translate.responses.stream_base import ResponsesStream
from ext_proc.translate.sse import chunk_error

__all__ = ["StreamTranslator"]


class StreamTranslator(ResponsesStream):
    """``chat.completion.chunk`` SSE in, Responses SSE out."""

    __slots__ = ("_finish_reason",)

    def __init__(self, ctx: ResponseContext) -> None:
        super().__init__(ctx)
        self._finish_reason: str | None = None

    def _payload(self, payload: dict[str, Any] | None, out: bytearray) -> None:
        if payload is None:
            self._close(out)
        elif (message := chunk_error(payload)) is not None:
            self._writer.fail(out, message or "The model provider reported an error.")
        else:
            self._chunk(payload, out)

    def _end(self, out: bytearray) -> None:
        # The usage chunk may never come; the answer itself is whole.
        if self._finish_reason is not None:
            self._close(out)
        else:
            super()._end(out)

    def _chunk(self, chunk: dict[str, Any], out: bytearray) -> None:
        writer = self._writer
        writer.start(out, chunk.get("model"))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        # A Response has one answer; n > 1 is never requested, so choice 0 is it.
        for choice in as_list(chunk.get("choices"))[:1]:
            choice = as_dict(choice)
            delta = as_dict(choice.get("delta"))
            text = delta.get("content")
            if isinstance(text, str) and text:
                writer.text(out, text)
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                writer.text(out, refusal, "refusal")
            for position, call in enumerate(as_list(delta.get("tool_calls"))):
                call = as_dict(call)
                key = call.get("index", position)
                function = as_dict(call.get("function"))
                if not writer.has_call(key):
                    call_id = call.get("id") or f"call_{key}"
                    writer.call_start(out, key, str(call_id), str(function.get("name") or ""))
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    writer.call_arguments(out, key, arguments)
            finish_reason = choice.get("finish_reason")
            if isinstance(finish_reason, str) and finish_reason:
                self._finish_reason = finish_reason

    def _close(self, out: bytearray) -> None:
        outcome = chat_outcome(self._finish_reason)
        self._writer.finish(out, outcome, usage_from_chat(self._usage))
