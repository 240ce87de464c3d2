"""HTTP/2 frames (RFC 9113, section 6): the wire constants, the frame header,
and serializing a frame. Parsing a frame's payload is the connection's job,
since what a payload means depends on the connection's state."""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9

# Flags.
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Error codes (section 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

HEAD_SIZE = 9
HEAD = struct.Struct(">IBI")
"""length (24 bits) and type in one word, flags, stream id (with its reserved bit)."""

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_FRAME_LIMIT = 16_777_215


def frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    head = (len(payload) << 8 | kind).to_bytes(4) + bytes((flags,)) + stream_id.to_bytes(4)
    return head + payload


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, code.to_bytes(4))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4))


def goaway(last_stream_id: int, code: int) -> bytes:
    return frame(GOAWAY, 0, 0, last_stream_id.to_bytes(4) + code.to_bytes(4))


class H2ConnectionError(Exception):
    """A connection error (section 5.4.1): GOAWAY with ``code``, then close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def unpad(flags: int, payload: bytes, *, priority: bool = False) -> bytes:
    """The frame's content without its padding (and, for HEADERS, its priority
    fields); padding that overruns the payload is a connection error (6.1)."""
    start, stop = 0, len(payload)
    if flags & PADDED:
        if not payload:
            raise H2ConnectionError(PROTOCOL_ERROR, "padding length missing")
        start, stop = 1, len(payload) - payload[0]
    if priority:
        start += 5
    if start > stop:
        raise H2ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[start:stop] if (start or stop != len(payload)) else payload
