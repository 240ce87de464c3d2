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
    ConverseEvents,
    StreamEvent,
    StreamFailure,
    finish_reason,
    openai_usage,
)
from ext_proc.translate.common import as_dict, dumps
from ext_proc.translate.sse import encode_event

__all__ = ["DONE", "StreamTranslator"]

DONE = b"data: [DONE]\n\n"


class StreamTranslator:
    """Feed Bedrock's body chunks; get the client's SSE bytes back."""

    __slots__ = (
        "_created",
        "_done",
        "_events",
        "_head",
        "_id",
        "_include_usage",
        "_model",
        "_stopped",
        "_tool_calls",
    )

    def __init__(self, *, model: str, response_id: str, created: int, include_usage: bool) -> None:
        self._events = ConverseEvents()
        self._model = model
        self._id = response_id
        self._created = created
        self._include_usage = include_usage
        # Everything before the delta is the same in every chunk: built once.
        self._head = (
            f'{{"id":{dumps(response_id)},"object":"chat.completion.chunk",'
            f'"created":{created},"model":{dumps(model)},"choices":[{{"index":0,"delta":'
        )
        self._tool_calls: dict[int, int] = {}
        """Converse ``contentBlockIndex`` -> OpenAI ``tool_calls[].index``."""
        self._stopped = False
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self._events.feed(chunk))

    def finish(self) -> bytes:
        out = bytearray(self._translate(self._events.finish()))
        if not self._done:
            if self._stopped:
                # The usage never came; the answer itself is whole.
                out += DONE
            else:
                self._error(out, "upstream_error", "Bedrock's stream ended before the answer did.")
            self._done = True
        return bytes(out)

    def _translate(self, events: list[StreamEvent | StreamFailure]) -> bytes:
        out = bytearray()
        for event in events:
            if self._done:
                break
            if isinstance(event, StreamFailure):
                error = event.as_gateway_error()
                self._error(out, event.code, event.message, error.openai_type)
            else:
                self._event(event, out)
        return bytes(out)

    def _emit(self, out: bytearray, delta: dict[str, Any], finish: str | None = None) -> None:
        tail = ',"logprobs":null,"finish_reason":' + (dumps(finish) if finish else "null") + "}]}"
        out += encode_event(self._head + dumps(delta) + tail)

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
                # As OpenAI does: one last chunk with no choices, carrying the usage.
                final = {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": openai_usage(body.get("usage")),
                }
                out += encode_event(dumps(final))
            out += DONE
            self._done = True
        # contentBlockStop and unknown events carry nothing for OpenAI.

    def _error(self, out: bytearray, code: str, message: str, kind: str = "server_error") -> None:
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        out += encode_event(dumps(body))
        self._done = True
