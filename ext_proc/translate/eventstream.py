"""AWS event-stream framing (``application/vnd.amazon.eventstream``), both ways.

Bedrock's ``converse-stream`` answers in binary frames, not SSE. Each frame:

    total length   u32 BE   the whole frame, these 4 bytes and the final CRC included
    headers length u32 BE
    prelude CRC    u32 BE   CRC32 of the 8 bytes above
    headers        name length u8, name (UTF-8), value type u8, typed value; repeated
    payload        total - headers - 16 bytes
    message CRC    u32 BE   CRC32 of every byte before it

Header value types: 0 true, 1 false (no value bytes), 2 byte (i8), 3 short (i16),
4 integer (i32), 5 long (i64), 6 byte array (u16 length + bytes), 7 string (u16
length + UTF-8), 8 timestamp (i64 milliseconds since the epoch), 9 UUID (16 bytes).

``EventStreamDecoder`` takes the body in whatever pieces the network gives and
returns only whole, checked frames; ``encode_message`` builds one frame (the
fake Bedrock server in the tests speaks through it).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "MAX_HEADERS_LENGTH",
    "MAX_MESSAGE_LENGTH",
    "EventStreamDecoder",
    "EventStreamError",
    "HeaderValue",
    "Message",
    "decode_headers",
    "encode_headers",
    "encode_message",
]

MAX_MESSAGE_LENGTH = 24 * 1024 * 1024
"""The largest frame accepted. A Converse event is a few hundred bytes; a length
beyond this is a corrupt prelude, and trusting it would buffer without end."""
MAX_HEADERS_LENGTH = 128 * 1024
"""The most header bytes one frame may carry (the limit AWS's own codecs apply)."""

_PRELUDE = struct.Struct(">III")
_PRELUDE_LENGTH = _PRELUDE.size  # 12: both lengths and the prelude CRC
_CRC_LENGTH = 4
_MIN_MESSAGE_LENGTH = _PRELUDE_LENGTH + _CRC_LENGTH

_TRUE, _FALSE, _BYTE, _SHORT, _INT, _LONG, _BYTES, _STRING, _TIMESTAMP, _UUID = range(10)
_FIXED = {_BYTE: struct.Struct(">b"), _SHORT: struct.Struct(">h"), _INT: struct.Struct(">i")}
_LONG_STRUCT = struct.Struct(">q")
_U16 = struct.Struct(">H")

HeaderValue = bool | int | bytes | str | datetime | uuid.UUID
"""A decoded header value; an ``int`` is a long (type 5) unless encoded otherwise."""


class EventStreamError(ValueError):
    """Bytes that are not a valid event stream: bad CRC, bad length, bad header."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.decoded: list[Message] = []
        """The good frames the same ``feed`` completed before the bad one."""


@dataclass(frozen=True, slots=True)
class Message:
    headers: Mapping[str, HeaderValue]
    payload: bytes

    def header(self, name: str) -> str | None:
        """A string header's value (``:event-type``, ``:message-type``...), else ``None``."""
        value = self.headers.get(name)
        return value if isinstance(value, str) else None


# --- decoding ----------------------------------------------------------------------


class EventStreamDecoder:
    """Feed body chunks in order; get back the frames they complete.

    Each frame is checked as soon as its prelude arrives (length bounds and the
    prelude CRC), so a corrupt length is refused before anything is buffered
    for it.
    """

    __slots__ = ("_buffer", "_max_message_length")

    def __init__(self, *, max_message_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._buffer = bytearray()
        self._max_message_length = max_message_length

    @property
    def pending(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Message]:
        self._buffer += chunk
        messages: list[Message] = []
        start = 0
        buffer = self._buffer
        try:
            while len(buffer) - start >= _PRELUDE_LENGTH:
                total = self._check_prelude(memoryview(buffer)[start : start + _PRELUDE_LENGTH])
                if len(buffer) - start < total:
                    break
                messages.append(_decode_frame(bytes(buffer[start : start + total])))
                start += total
        except EventStreamError as error:
            # What came before the corruption is good, and the reader may still use it.
            error.decoded = messages
            raise
        del buffer[:start]
        return messages

    def finish(self) -> None:
        """At end of stream: raises if a frame was left unfinished."""
        if self._buffer:
            raise EventStreamError(
                f"the event stream ended inside a frame ({len(self._buffer)} bytes left over)"
            )

    def _check_prelude(self, prelude: memoryview) -> int:
        total, headers_length, crc = _PRELUDE.unpack(prelude)
        if zlib.crc32(prelude[:8]) != crc:
            raise EventStreamError("event stream prelude CRC mismatch: the bytes are corrupt")
        if total < _MIN_MESSAGE_LENGTH or total > self._max_message_length:
            raise EventStreamError(
                f"event stream frame length {total} is outside "
                f"{_MIN_MESSAGE_LENGTH}..{self._max_message_length} bytes"
            )
        if headers_length > MAX_HEADERS_LENGTH or headers_length > total - _MIN_MESSAGE_LENGTH:
            raise EventStreamError(
                f"event stream headers length {headers_length} does not fit its frame "
                f"({total} bytes, at most {MAX_HEADERS_LENGTH} header bytes)"
            )
        return int(total)


def _decode_frame(frame: bytes) -> Message:
    """One whole frame whose prelude is already checked."""
    (expected,) = struct.unpack_from(">I", frame, len(frame) - _CRC_LENGTH)
    if zlib.crc32(memoryview(frame)[:-_CRC_LENGTH]) != expected:
        raise EventStreamError("event stream message CRC mismatch: the bytes are corrupt")
    (headers_length,) = struct.unpack_from(">I", frame, 4)
    headers_end = _PRELUDE_LENGTH + headers_length
    headers = decode_headers(frame[_PRELUDE_LENGTH:headers_end])
    return Message(headers, frame[headers_end:-_CRC_LENGTH])


def decode_headers(data: bytes) -> dict[str, HeaderValue]:
    """The headers section of a frame, as a dict (a repeated name keeps its last value)."""
    headers: dict[str, HeaderValue] = {}
    pos = 0
    end = len(data)
    while pos < end:
        name_length = data[pos]
        pos += 1
        if name_length == 0 or pos + name_length + 1 > end:
            raise EventStreamError("event stream header name is empty or runs past its section")
        name = _utf8(data[pos : pos + name_length], "header name")
        pos += name_length
        kind = data[pos]
        pos += 1
        value: HeaderValue
        if kind == _TRUE:
            value = True
        elif kind == _FALSE:
            value = False
        elif kind in _FIXED:
            fixed = _FIXED[kind]
            _need(pos + fixed.size, end, name)
            (value,) = fixed.unpack_from(data, pos)
            pos += fixed.size
        elif kind in (_LONG, _TIMESTAMP):
            _need(pos + 8, end, name)
            (number,) = _LONG_STRUCT.unpack_from(data, pos)
            pos += 8
            value = number if kind == _LONG else _from_millis(number, name)
        elif kind in (_BYTES, _STRING):
            _need(pos + 2, end, name)
            (length,) = _U16.unpack_from(data, pos)
            pos += 2
            _need(pos + length, end, name)
            raw = data[pos : pos + length]
            pos += length
            value = _utf8(raw, f"header {name!r}") if kind == _STRING else bytes(raw)
        elif kind == _UUID:
            _need(pos + 16, end, name)
            value = uuid.UUID(bytes=bytes(data[pos : pos + 16]))
            pos += 16
        else:
            raise EventStreamError(f"event stream header {name!r} has unknown value type {kind}")
        headers[name] = value
    return headers


def _need(position: int, end: int, name: str) -> None:
    if position > end:
        raise EventStreamError(f"event stream header {name!r} runs past its section")


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EventStreamError(f"event stream {what} is not UTF-8") from None


def _from_millis(millis: int, name: str) -> datetime:
    try:
        return datetime.fromtimestamp(millis / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise EventStreamError(f"event stream header {name!r} is not a valid timestamp") from None


# --- encoding ----------------------------------------------------------------------


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """One frame: ``headers`` (``str`` values as strings, ``int`` as longs) and ``payload``."""
    encoded_headers = encode_headers(headers)
    total = _MIN_MESSAGE_LENGTH + len(encoded_headers) + len(payload)
    if len(encoded_headers) > MAX_HEADERS_LENGTH:
        raise EventStreamError(f"event stream headers exceed {MAX_HEADERS_LENGTH} bytes")
    if total > MAX_MESSAGE_LENGTH:
        raise EventStreamError(f"event stream frame exceeds {MAX_MESSAGE_LENGTH} bytes")
    lengths = struct.pack(">II", total, len(encoded_headers))
    head = lengths + struct.pack(">I", zlib.crc32(lengths))
    body = head + encoded_headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def encode_headers(headers: Mapping[str, HeaderValue]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode()
        if not 0 < len(raw_name) < 256:
            raise EventStreamError(f"event stream header name {name!r} must be 1..255 bytes")
        out.append(len(raw_name))
        out += raw_name
        out += _encode_value(name, value)
    return bytes(out)


def _encode_value(name: str, value: HeaderValue) -> bytes:
    # bool before int: a bool is an int to isinstance.
    if value is True:
        return bytes([_TRUE])
    if value is False:
        return bytes([_FALSE])
    if isinstance(value, int):
        return bytes([_LONG]) + _LONG_STRUCT.pack(value)
    if isinstance(value, str | bytes):
        raw = value.encode() if isinstance(value, str) else value
        if len(raw) > 0xFFFF:
            raise EventStreamError(f"event stream header {name!r} is over 65535 bytes")
        kind = _STRING if isinstance(value, str) else _BYTES
        return bytes([kind]) + _U16.pack(len(raw)) + raw
    if isinstance(value, datetime):
        return bytes([_TIMESTAMP]) + _LONG_STRUCT.pack(round(value.timestamp() * 1000))
    if isinstance(value, uuid.UUID):
        return bytes([_UUID]) + value.bytes
    raise EventStreamError(f"event stream header {name!r}: {type(value).__name__} is not encodable")
