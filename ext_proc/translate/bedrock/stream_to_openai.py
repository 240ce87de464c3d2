"""ConverseStream event-stream frames as OpenAI ``chat.completion.chunk`` SSE.

Converse reports the stop reason (``messageStop``) before the usage
(``metadata``): the finishing chunk goes out at the first, the usage chunk
(when the client asked for it) and ``[DONE]`` at the second. An exception event
or a corrupt frame ends the stream with an OpenAI error chunk and no ``[DONE]``,
so the client cannot take a cut-off answer for a whole one.
"""

from __future__ import annotations

from typing import Any

from ext_proc.translate.bedrock.converse import (
    ConverseStream,
    StreamEvent,
    StreamFailure,
    finish_reason,
    openai_usage,
)
from ext_proc.translate.chunks import DONE, chunk_event, chunk_head, error_event, usage_event
from ext_proc.translate.common import as_dict

__all__ = ["DONE", "StreamTranslator"]


class StreamTranslator(ConverseStream):
    """ConverseStream in, OpenAI ``chat.completion.chunk`` SSE out."""

    __slots__ = (
        "_created",
        "_head",
        "_id",
        "_include_usage",
        "_model",
        "_stopped",
        "_tool_calls",
    )

    def __init__(self, *, model: str, response_id: str, created: int, include_usage: bool) -> None:
        super().__init__()
        self._model = model
        self._id = response_id
        self._created = created
        self._include_usage = include_usage
        # Everything before the delta is the same in every chunk: built once.
        self._head = chunk_head(response_id, created, model)
        self._tool_calls: dict[int, int] = {}
        """Converse ``contentBlockIndex`` -> OpenAI ``tool_calls[].index``."""
        self._stopped = False

    def _end(self, out: bytearray) -> None:
        if self._stopped:
            # The usage never came; the answer itself is whole.
            out += DONE
        else:
            self._error(out, "upstream_error", "Bedrock's stream ended before the answer did.")
        self._done = True

    def _failure(self, failure: StreamFailure, out: bytearray) -> None:
        error = failure.as_gateway_error()
        self._error(out, failure.code, failure.message, error.openai_type)

    def _emit(self, out: bytearray, delta: dict[str, Any], finish: str | None = None) -> None:
        out += chunk_event(self._head, delta, finish)

    def _event(self, event: StreamEvent, out: bytearray) -> None:
        body = event.body
        kind = event.kind
        if kind == "contentBlockDelta":
            delta = as_dict(body.get("delta"))
            text = delta.get("text")
            if isinstance(text, str):
                if text:
                    self._emit(out, {"content": text})
            elif "toolUse" in delta:
                index = self._tool_calls.get(body.get("contentBlockIndex", -1))
                arguments = as_dict(delta["toolUse"]).get("input")
                if index is not None and isinstance(arguments, str) and arguments:
                    call = {"index": index, "function": {"arguments": arguments}}
                    self._emit(out, {"tool_calls": [call]})
            # Reasoning deltas have no place in a chat completion.
        elif kind == "contentBlockStart":
            use = as_dict(as_dict(body.get("start")).get("toolUse"))
            if use:
                index = len(self._tool_calls)
                self._tool_calls[body.get("contentBlockIndex", index)] = index
                call = {
                    "index": index,
                    "id": use.get("toolUseId"),
                    "type": "function",
                    "function": {"name": use.get("name"), "arguments": ""},
                }
                self._emit(out, {"tool_calls": [call]})
        elif kind == "messageStart":
            self._emit(out, {"role": "assistant", "content": ""})
        elif kind == "messageStop":
            self._stopped = True
            self._emit(out, {}, finish_reason(body.get("stopReason")))
        elif kind == "metadata":
            if self._include_usage:
                usage = openai_usage(body.get("usage"))
                out += usage_event(self._id, self._created, self._model, usage)
            out += DONE
            self._done = True
        # contentBlockStop and unknown events carry nothing for OpenAI.

    def _error(self, out: bytearray, code: str, message: str, kind: str = "server_error") -> None:
        out += error_event(message, code, kind)
        self._done = True
