"""An Anthropic SSE stream as OpenAI ``chat.completion.chunk`` events, event by event."""

from __future__ import annotations

from typing import Any

from ext_proc.translate.chunks import DONE, chunk_event, chunk_head, error_event, usage_event
from ext_proc.translate.common import as_dict, dumps
from ext_proc.translate.openai_anthropic.response import finish_reason, openai_usage
from ext_proc.translate.sse import SSEDecoder, SSEEvent, json_objects

__all__ = ["DONE", "StreamTranslator"]


class StreamTranslator:
    """Anthropic SSE in, OpenAI ``chat.completion.chunk`` SSE out, event by event.

    ``feed`` takes body chunks as they arrive and returns what the client can
    be sent now; ``finish`` flushes at end of stream.
    """

    __slots__ = (
        "_created",
        "_decoder",
        "_done",
        "_head",
        "_id",
        "_include_usage",
        "_model",
        "_tool_calls",
        "_usage",
    )

    def __init__(self, *, created: int, include_usage: bool) -> None:
        self._decoder = SSEDecoder()
        self._created = created
        self._include_usage = include_usage
        self._id = ""
        self._model = ""
        self._head = chunk_head(self._id, created, self._model)
        self._tool_calls: dict[int, int] = {}
        """Anthropic content block index -> OpenAI ``tool_calls[].index``."""
        self._usage: dict[str, Any] = {}
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self._decoder.feed(chunk))

    def finish(self) -> bytes:
        return self._translate(self._decoder.flush())

    def _translate(self, events: list[SSEEvent]) -> bytes:
        out = bytearray()
        for payload in json_objects(events):
            if self._done:
                break
            if payload is not None:  # Anthropic never sends [DONE]; one that does ends nothing
                self._event(payload, out)
        return bytes(out)

    def _emit(self, out: bytearray, delta: dict[str, Any], finish: str | None = None) -> None:
        out += chunk_event(self._head, delta, finish)

    def _event(self, payload: dict[str, Any], out: bytearray) -> None:
        kind = payload.get("type")
        if kind == "content_block_delta":
            delta = as_dict(payload.get("delta"))
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                self._emit(out, {"content": delta.get("text", "")})
            elif delta_type == "input_json_delta":
                index = self._tool_calls.get(payload.get("index", -1))
                if index is not None:
                    arguments = delta.get("partial_json", "")
                    call = {"index": index, "function": {"arguments": arguments}}
                    self._emit(out, {"tool_calls": [call]})
        elif kind == "content_block_start":
            self._block_start(payload, out)
        elif kind == "message_start":
            message = as_dict(payload.get("message"))
            self._id = str(message.get("id", ""))
            self._model = str(message.get("model", ""))
            self._head = chunk_head(self._id, self._created, self._model)
            self._usage.update(as_dict(message.get("usage")))
            self._emit(out, {"role": "assistant", "content": ""})
        elif kind == "message_delta":
            self._usage.update(
                {k: v for k, v in as_dict(payload.get("usage")).items() if v is not None}
            )
            stop_reason = as_dict(payload.get("delta")).get("stop_reason")
            self._emit(out, {}, finish_reason(stop_reason))
        elif kind == "message_stop":
            if self._include_usage:
                usage = openai_usage(self._usage)
                out += usage_event(self._id, self._created, self._model, usage)
            out += DONE
            self._done = True
        elif kind == "error":
            error = as_dict(payload.get("error"))
            message = error.get("message") or "The model provider reported an error mid-stream."
            out += error_event(message, error.get("type"))
            self._done = True
        # ping, content_block_stop and unknown events carry nothing for OpenAI.

    def _block_start(self, payload: dict[str, Any], out: bytearray) -> None:
        block = as_dict(payload.get("content_block"))
        kind = block.get("type")
        if kind == "tool_use":
            index = len(self._tool_calls)
            self._tool_calls[payload.get("index", index)] = index
            tool_input = block.get("input")
            call = {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": dumps(tool_input) if tool_input else "",
                },
            }
            self._emit(out, {"tool_calls": [call]})
        elif kind == "text" and block.get("text"):
            self._emit(out, {"content": block["text"]})
