"""gRPC over HTTP/2: statuses, the handler interface, length-prefixed
messages, and the response headers and trailers (the gRPC HTTP/2 protocol
spec). Compression is never offered, so only uncompressed messages exist."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Protocol

from ext_proc.transport.hpack import literal

__all__ = [
    "GrpcError",
    "HandlerFactory",
    "RequestHeaders",
    "StreamHandler",
    "StreamStatus",
]


class StreamStatus:
    """gRPC status codes this server sends."""

    OK = 0
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class GrpcError(Exception):
    """Raised by a handler to end its stream with a non-OK gRPC status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StreamHandler(Protocol):
    """One per gRPC stream: turns each request message into one response message."""

    def handle(self, message: bytes) -> Coroutine[object, object, bytes]: ...


RequestHeaders = Sequence[tuple[bytes, bytes]]
"""A stream's request headers as HPACK decoded them: gRPC metadata included."""

HandlerFactory = Callable[[RequestHeaders], StreamHandler]
"""Makes the handler of one new stream of a method, from its request headers."""


# ``:status: 200`` is entry 8 of HPACK's static table.
RESPONSE_HEADERS = b"\x88" + literal(b"content-type", b"application/grpc")
_OK_TRAILERS = literal(b"grpc-status", b"0")
MAX_STATUS_MESSAGE = 256
"""grpc-message is cut here: a handler's message may quote client input, and a
reply must not grow with what the client sent."""


def trailers(status: int, message: str = "") -> bytes:
    if status == StreamStatus.OK:
        return _OK_TRAILERS
    block = literal(b"grpc-status", str(status).encode())
    if message:
        if len(message) > MAX_STATUS_MESSAGE:
            message = message[: MAX_STATUS_MESSAGE - 3] + "..."
        # grpc-message is percent-encoded (gRPC over HTTP/2 spec).
        encoded = "".join(
            c if 0x20 <= ord(c) < 0x7F and c != "%" else "".join(f"%{b:02X}" for b in c.encode())
            for c in message
        )
        block += literal(b"grpc-message", encoded.encode())
    return block


def message_prefix(size: int) -> bytes:
    """The 5-byte prefix of an uncompressed message: flag 0, then its length."""
    return size.to_bytes(5)


def split_messages(rx: bytearray, limit: int) -> tuple[list[bytes], tuple[int, str] | None]:
    """Take the whole messages off the front of ``rx``; a partial one stays.
    The second item is the status to end the stream with when a message's
    prefix is refused (too large, or compressed), judged before the rest of
    that message is buffered."""
    out: list[bytes] = []
    failure: tuple[int, str] | None = None
    pos, end = 0, len(rx)
    while end - pos >= 5:
        if rx[pos] != 0:
            failure = (StreamStatus.UNIMPLEMENTED, "compressed messages")
            break
        size = int.from_bytes(rx[pos + 1 : pos + 5])
        if size > limit:
            failure = (
                StreamStatus.RESOURCE_EXHAUSTED,
                f"message of {size} bytes exceeds the limit of {limit}",
            )
            break
        if end - pos - 5 < size:
            break
        out.append(bytes(rx[pos + 5 : pos + 5 + size]))
        pos += 5 + size
    if pos:
        del rx[:pos]
    return out, failure
