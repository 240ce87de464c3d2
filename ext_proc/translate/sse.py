"""Server-sent events, parsed incrementally and serialised again.

Upstreams send SSE in whatever pieces the network gives them: an event, a line
or a UTF-8 character may be split across body chunks. ``SSEDecoder`` keeps the
unfinished tail between ``feed`` calls and returns only whole events, so a
translator never sees half an event and never waits for more than one.

Only what LLM APIs use is kept: ``event`` and ``data`` (multi-line data joined
with ``\\n``). Comments (``: ping``), ``id`` and ``retry`` are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_PENDING_BYTES",
    "SSEDecoder",
    "SSEError",
    "SSEEvent",
    "chunk_error",
    "encode_event",
    "json_objects",
]

MAX_PENDING_BYTES = 16 * 1024 * 1024
"""The longest unfinished event kept between chunks. A stream that never ends
its event is not SSE; without a bound it would grow without end."""


class SSEError(ValueError):
    """The upstream's bytes cannot be an SSE stream."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str | None
    """The ``event:`` field; ``None`` when the event had none (OpenAI never names events)."""
    data: str


class SSEDecoder:
    """Feed body chunks in order; get back the events they complete."""

    __slots__ = ("_data_lines", "_event", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._event: str | None = None
        self._data_lines: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._pending + chunk if self._pending else chunk
        events: list[SSEEvent] = []
        if b"\r" in buf:
            self._pending = self._feed_with_carriage_returns(buf, events)
        else:
            # What providers send: LF only, split in one pass at C speed.
            lines = buf.split(b"\n")
            self._pending = lines.pop()
            for line in lines:
                self._line(line, events)
        if len(self._pending) > MAX_PENDING_BYTES:
            raise SSEError(f"an SSE line grew past {MAX_PENDING_BYTES} bytes without ending")
        return events

    def _feed_with_carriage_returns(self, buf: bytes, events: list[SSEEvent]) -> bytes:
        """CRLF and lone CR end lines too; returns the unfinished tail."""
        start = 0
        size = len(buf)
        while start < size:
            newline = buf.find(b"\n", start)
            carriage = buf.find(b"\r", start, newline if newline >= 0 else size)
            if carriage >= 0:
                # CR at the very end may be the first half of CRLF: it waits
                # for the next chunk.
                if carriage == size - 1:
                    break
                end = carriage
                nxt = carriage + 2 if buf[carriage + 1 : carriage + 2] == b"\n" else carriage + 1
            elif newline >= 0:
                end, nxt = newline, newline + 1
            else:
                break
            self._line(buf[start:end], events)
            start = nxt
        return buf[start:]

    def flush(self) -> list[SSEEvent]:
        """At end of stream: the last event, even without its closing blank line."""
        events: list[SSEEvent] = []
        if self._pending:
            # What is left is one unfinished line, perhaps held back for a CR.
            self._line(self._pending.rstrip(b"\r"), events)
            self._pending = b""
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data_lines:
                events.append(SSEEvent(self._event, "\n".join(self._data_lines)))
            self._event = None
            self._data_lines = []
            return
        # Only complete lines get here, so a multi-byte character is never cut.
        if raw.startswith(b"data"):
            value = _field_value(raw, 4)
            if value is not None:
                self._data_lines.append(value)
        elif raw.startswith(b"event"):
            value = _field_value(raw, 5)
            if value is not None:
                self._event = value
        # Comments (":..."), id, retry and unknown fields carry nothing here.


def _field_value(raw: bytes, name_length: int) -> str | None:
    """The value of a ``name: value`` line, or ``None`` when the name only starts it."""
    if len(raw) == name_length:
        return ""
    if raw[name_length] != 0x3A:  # ":"
        return None
    start = name_length + 2 if raw[name_length + 1 : name_length + 2] == b" " else name_length + 1
    return raw[start:].decode("utf-8", "replace")


def encode_event(data: str, event: str | None = None) -> bytes:
    """One SSE event; ``data`` must be a single line (compact JSON is)."""
    if event is None:
        return f"data: {data}\n\n".encode()
    return f"event: {event}\ndata: {data}\n\n".encode()


def json_objects(events: Iterable[SSEEvent]) -> Iterator[dict[str, Any] | None]:
    """The JSON object each event carries, in order, and ``None`` for OpenAI's
    ``[DONE]``; an event whose data is no JSON object carries nothing to translate."""
    for event in events:
        if event.data == "[DONE]":
            yield None
            continue
        try:
            payload = json.loads(event.data)
        except ValueError:
            continue
        if isinstance(payload, dict):
            yield payload


def chunk_error(chunk: dict[str, Any]) -> str | None:
    """The message of an error an OpenAI-compatible server sent in place of a chunk
    (``{"error": {...}}``, or ``{"error": "..."}`` from some), ``""`` when it gave
    none; ``None`` for an ordinary chunk."""
    error = chunk.get("error")
    if error is None:
        return None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or "")
