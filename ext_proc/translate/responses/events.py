"""The Responses streaming protocol, written event by event.

Both stream translators say what happened upstream (text arrived, a tool call
began, the answer ended) and ``EventWriter`` turns it into the event sequence
the openai SDK's stream accumulator requires::

    response.created, response.in_progress,
    per message item:  output_item.added, content_part.added,
                       output_text.delta..., output_text.done,
                       content_part.done, output_item.done
    per function call: output_item.added, function_call_arguments.delta...,
                       function_call_arguments.done, output_item.done
    response.completed | response.incomplete | response.failed

Every event carries its ``type`` (also its SSE ``event:`` name) and a
``sequence_number`` counting from 0. The writer also keeps the finished output
items, which conversation state stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ext_proc.translate.common import dumps
from ext_proc.translate.responses.output import (
    FAILED,
    Outcome,
    build_response,
    function_call_item,
    item_id,
    message_item,
    refusal_part,
    text_part,
)
from ext_proc.translate.responses.request import Item, ResponseContext
from ext_proc.translate.sse import encode_event

__all__ = ["EventWriter"]

_TEXT = "output_text"
_REFUSAL = "refusal"


@dataclass(slots=True)
class _Message:
    index: int
    id: str
    parts: list[Item] = field(default_factory=list)
    kind: str | None = None
    """The open content part's type, ``output_text`` or ``refusal``; ``None`` when none is open."""
    chunks: list[str] = field(default_factory=list)
    delta_head: str = ""
    """The open text part's delta event up to its ``delta`` value."""


@dataclass(slots=True)
class _Call:
    index: int
    id: str
    call_id: str
    name: str
    chunks: list[str] = field(default_factory=list)


class EventWriter:
    """Appends Responses SSE events to ``out`` as the translator reports what happened."""

    __slots__ = (
        "_calls",
        "_ctx",
        "_message",
        "_model",
        "_output",
        "_sequence",
        "_started",
        "done",
    )

    def __init__(self, ctx: ResponseContext) -> None:
        self._ctx = ctx
        self._sequence = 0
        self._model: object = None
        self._output: dict[int, Item] = {}
        """Finished items by output index."""
        self._message: _Message | None = None
        self._calls: dict[object, _Call] = {}
        """Open function calls by the translator's key (an upstream index)."""
        self.done = False
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    def _next_index(self) -> int:
        open_indexes = [c.index for c in self._calls.values()]
        if self._message is not None:
            open_indexes.append(self._message.index)
        return max([*self._output, *open_indexes], default=-1) + 1

    def _emit(self, out: bytearray, kind: str, payload: dict[str, Any]) -> None:
        event = {"type": kind, **payload, "sequence_number": self._sequence}
        self._sequence += 1
        out += encode_event(dumps(event), kind)

    def _response(self, outcome: Outcome | None, usage: Item | None, error: Item | None) -> Item:
        output = [self._output[i] for i in sorted(self._output)]
        return build_response(
            self._ctx, model=self._model, output=output, outcome=outcome, usage=usage, error=error
        )

    # --- lifecycle -----------------------------------------------------------------

    def start(self, out: bytearray, model: object) -> None:
        """``response.created`` and ``response.in_progress``; once."""
        if self._started:
            return
        self._started = True
        self._model = model
        response = self._response(None, None, None)
        self._emit(out, "response.created", {"response": response})
        self._emit(out, "response.in_progress", {"response": response})

    def finish(self, out: bytearray, outcome: Outcome, usage: Item) -> None:
        """Close what is open, then ``response.completed`` or ``response.incomplete``."""
        if self.done:
            return
        self.start(out, self._model)
        item_status = "completed" if outcome[0] == "completed" else "incomplete"
        self._close_all(out, item_status)
        kind = "response.completed" if outcome[0] == "completed" else "response.incomplete"
        self._emit(out, kind, {"response": self._response(outcome, usage, None)})
        self.done = True

    def fail(self, out: bytearray, message: str) -> None:
        """``response.failed`` carrying the error; what was said so far stays in its output."""
        if self.done:
            return
        self.start(out, self._model)
        self._close_all(out, "incomplete")
        error = {"code": "server_error", "message": message}
        self._emit(out, "response.failed", {"response": self._response(FAILED, None, error)})
        self.done = True

    def output_items(self) -> list[Item]:
        """The finished output items, in order: what a stored conversation keeps."""
        return [self._output[i] for i in sorted(self._output)]

    def _close_all(self, out: bytearray, status: str) -> None:
        self.close_message(out, status)
        for key in sorted(self._calls, key=lambda k: self._calls[k].index):
            self.close_call(out, key, status)

    # --- message text --------------------------------------------------------------

    def text(self, out: bytearray, delta: str, kind: str = _TEXT) -> None:
        """Text (``output_text``) or a refusal (``refusal``) from the model."""
        message = self._message
        if message is None:
            index = self._next_index()
            message = self._message = _Message(index, item_id(self._ctx, "msg", index))
            item = message_item(message.id, [], "in_progress")
            self._emit(out, "response.output_item.added", {"output_index": index, "item": item})
        if message.kind != kind:
            self._close_part(out, message)
            message.kind = kind
            part = text_part("") if kind == _TEXT else refusal_part("")
            self._emit(out, "response.content_part.added", self._part_fields(message, part=part))
            message.delta_head = (
                "event: response.output_text.delta\n"
                'data: {"type":"response.output_text.delta",'
                f'"item_id":{dumps(message.id)},"output_index":{message.index},'
                f'"content_index":{len(message.parts)},"delta":'
            )
        message.chunks.append(delta)
        if kind == _TEXT:
            # Most events of a stream are these: formatted directly, one small dumps each.
            out += (
                f"{message.delta_head}{dumps(delta)},"
                f'"logprobs":[],"sequence_number":{self._sequence}}}\n\n'
            ).encode()
            self._sequence += 1
        else:
            self._emit(out, "response.refusal.delta", self._part_fields(message, delta=delta))

    def _part_fields(self, message: _Message, **fields: Any) -> dict[str, Any]:
        return {
            "item_id": message.id,
            "output_index": message.index,
            "content_index": len(message.parts),
            **fields,
        }

    def _close_part(self, out: bytearray, message: _Message) -> None:
        if message.kind is None:
            return
        text = "".join(message.chunks)
        if message.kind == _TEXT:
            part = text_part(text)
            fields = self._part_fields(message, text=text, logprobs=[])
            self._emit(out, "response.output_text.done", fields)
        else:
            part = refusal_part(text)
            self._emit(out, "response.refusal.done", self._part_fields(message, refusal=text))
        self._emit(out, "response.content_part.done", self._part_fields(message, part=part))
        message.parts.append(part)
        message.kind = None
        message.chunks = []

    def close_message(self, out: bytearray, status: str = "completed") -> None:
        message = self._message
        if message is None:
            return
        self._close_part(out, message)
        item = message_item(message.id, message.parts, status)
        self._output[message.index] = item
        self._emit(out, "response.output_item.done", {"output_index": message.index, "item": item})
        self._message = None

    # --- function calls ------------------------------------------------------------

    def call_start(self, out: bytearray, key: object, call_id: str, name: str) -> None:
        """A function call begins; text so far ends its message item."""
        self.close_message(out)
        index = self._next_index()
        call = self._calls[key] = _Call(index, item_id(self._ctx, "fc", index), call_id, name)
        item = function_call_item(call.id, call_id, name, "", "in_progress")
        self._emit(out, "response.output_item.added", {"output_index": index, "item": item})

    def has_call(self, key: object) -> bool:
        return key in self._calls

    def call_arguments(self, out: bytearray, key: object, delta: str) -> None:
        call = self._calls.get(key)
        if call is None or not delta:
            return
        call.chunks.append(delta)
        fields = {"item_id": call.id, "output_index": call.index, "delta": delta}
        self._emit(out, "response.function_call_arguments.delta", fields)

    def close_call(self, out: bytearray, key: object, status: str = "completed") -> None:
        call = self._calls.pop(key, None)
        if call is None:
            return
        arguments = "".join(call.chunks)
        fields = {
            "item_id": call.id,
            "output_index": call.index,
            "name": call.name,
            "arguments": arguments,
        }
        self._emit(out, "response.function_call_arguments.done", fields)
        item = function_call_item(call.id, call.call_id, call.name, arguments, status)
        self._output[call.index] = item
        self._emit(out, "response.output_item.done", {"output_index": call.index, "item": item})
