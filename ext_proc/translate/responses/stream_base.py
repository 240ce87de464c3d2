"""What both Responses stream translators share: the upstream SSE decoded into
JSON payloads, and one ``EventWriter`` writing the Responses events.

A subclass reads its provider's payloads (``_payload``) and says how a stream
that stops without the provider's own end ends the Response (``_end``).
"""

from __future__ import annotations

from typing import Any

from ext_proc.translate.responses.events import EventWriter
from ext_proc.translate.responses.request import Item, ResponseContext
from ext_proc.translate.sse import SSEDecoder, SSEEvent, json_objects

__all__ = ["CUT_OFF", "ResponsesStream"]

CUT_OFF = "The model provider's stream ended before the answer did."


class ResponsesStream:
    """Feed upstream body chunks in order; get back the client's SSE bytes."""

    __slots__ = ("_decoder", "_usage", "_writer")

    def __init__(self, ctx: ResponseContext) -> None:
        self._decoder = SSEDecoder()
        self._writer = EventWriter(ctx)
        self._usage: dict[str, Any] = {}

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self._decoder.feed(chunk))

    def finish(self) -> bytes:
        out = bytearray(self._translate(self._decoder.flush()))
        if not self._writer.done:
            self._end(out)
        return bytes(out)

    def output_items(self) -> list[Item]:
        """The Response's output items, for conversation state, once the stream is done."""
        return self._writer.output_items()

    def _translate(self, events: list[SSEEvent]) -> bytes:
        out = bytearray()
        for payload in json_objects(events):
            if self._writer.done:
                break
            self._payload(payload, out)
        return bytes(out)

    def _payload(self, payload: dict[str, Any] | None, out: bytearray) -> None:
        """One upstream JSON object, or ``None`` for ``[DONE]``."""
        raise NotImplementedError

    def _end(self, out: bytearray) -> None:
        """The upstream stream ended and the Response is not done: it was cut off."""
        self._writer.fail(out, CUT_OFF)
