"""An OpenAI ``chat.completion.chunk`` SSE stream as Anthropic SSE events."""

from __future__ import annotations

from typing import Any

from ext_proc.translate.anthropic_openai.response import anthropic_usage, stop_reason
from ext_proc.translate.common import as_dict, as_list, dumps
from ext_proc.translate.sse import SSEDecoder, SSEEvent, chunk_error, encode_event, json_objects

__all__ = ["StreamTranslator"]


class StreamTranslator:
    """OpenAI ``chat.completion.chunk`` SSE in, Anthropic SSE events out.

    Anthropic content blocks are sequential: text and each tool call become
    their own block, opened on first sight and closed when another starts.
    OpenAI reports usage in a chunk after ``finish_reason``, so ``message_delta``
    and ``message_stop`` wait for ``[DONE]`` (or the end of the stream).
    """

    __slots__ = (
        "_decoder",
        "_done",
        "_next_block",
        "_open_block",
        "_started",
        "_stop_reason",
        "_text_open",
        "_tool_blocks",
        "_usage",
    )

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._started = False
        self._next_block = 0
        self._open_block: int | None = None
        self._text_open = False
        self._tool_blocks: dict[int, int] = {}
        """OpenAI ``tool_calls[].index`` -> Anthropic content block index."""
        self._stop_reason: str | None = None
        self._usage: dict[str, Any] = {}
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self._decoder.feed(chunk))

    def finish(self) -> bytes:
        out = bytearray(self._translate(self._decoder.flush()))
        if not self._done:
            if self._stop_reason is not None:
                self._close(out)
            else:
                # Without a finish_reason the answer was cut off: say so rather
                # than end it as if it were whole.
                self._error(out, "The model provider's stream ended before the answer did.")
        return bytes(out)

    def _translate(self, events: list[SSEEvent]) -> bytes:
        out = bytearray()
        for payload in json_objects(events):
            if self._done:
                break
            if payload is None:
                self._close(out)
            elif (message := chunk_error(payload)) is not None:
                self._error(out, message or "The model provider reported an error mid-stream.")
            else:
                self._chunk(payload, out)
        return bytes(out)

    def _chunk(self, chunk: dict[str, Any], out: bytearray) -> None:
        if not self._started:
            self._start(chunk, out)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        for choice in as_list(chunk.get("choices")):
            choice = as_dict(choice)
            delta = as_dict(choice.get("delta"))
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._text(text, out)
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                self._text(refusal, out)
            for position, call in enumerate(as_list(delta.get("tool_calls"))):
                self._tool_call(as_dict(call), position, out)
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                self._stop_reason = stop_reason(finish_reason)
                self._close_block(out)

    def _start(self, chunk: dict[str, Any], out: bytearray) -> None:
        self._started = True
        message = {
            "id": chunk.get("id", ""),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Input tokens are only known at the end; message_delta carries them.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        out += _event("message_start", {"type": "message_start", "message": message})

    def _text(self, text: str, out: bytearray) -> None:
        if not self._text_open:
            self._close_block(out)
            self._open(out, {"type": "text", "text": ""})
            self._text_open = True
        out += _delta_event(self._open_block, "text_delta", "text", text)

    def _tool_call(self, call: dict[str, Any], position: int, out: bytearray) -> None:
        index = call.get("index", position)
        function = as_dict(call.get("function"))
        block = self._tool_blocks.get(index)
        if block is None:
            self._close_block(out)
            tool_id = call.get("id") or f"toolu_archway_{index}"
            self._open(
                out, {"type": "tool_use", "id": tool_id, "name": function.get("name"), "input": {}}
            )
            block = self._tool_blocks[index] = self._next_block - 1
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out += _delta_event(block, "input_json_delta", "partial_json", arguments)

    def _open(self, out: bytearray, block: dict[str, Any]) -> None:
        self._open_block = self._next_block
        self._next_block += 1
        out += _event(
            "content_block_start",
            {"type": "content_block_start", "index": self._open_block, "content_block": block},
        )

    def _close_block(self, out: bytearray) -> None:
        if self._open_block is not None:
            out += _event(
                "content_block_stop", {"type": "content_block_stop", "index": self._open_block}
            )
            self._open_block = None
            self._text_open = False

    def _close(self, out: bytearray) -> None:
        if self._done:
            return
        if not self._started:
            self._start({}, out)
        self._close_block(out)
        delta = {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}
        usage = anthropic_usage(self._usage)
        out += _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        out += _event("message_stop", {"type": "message_stop"})
        self._done = True

    def _error(self, out: bytearray, message: str) -> None:
        error = {"type": "error", "error": {"type": "api_error", "message": message}}
        out += _event("error", error)
        self._done = True


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return encode_event(dumps(payload), name)


def _delta_event(index: int | None, kind: str, field: str, value: str) -> bytes:
    # Most events of a stream are deltas: formatted directly, one small dumps each.
    return (
        'event: content_block_delta\ndata: {"type":"content_block_delta",'
        f'"index":{index},"delta":{{"type":"{kind}","{field}":{dumps(value)}}}}}\n\n'
    ).encode()
