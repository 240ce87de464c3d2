"""A raw HTTP/2 client for attacking the transport, and a server fixture helper:
every frame is written by hand (with ``hyperframe``'s help where it fits), so a
test can send what no well-behaved client library would."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

from hpack import Encoder

from ext_proc.transport import GrpcError, H2GrpcServer, HandlerFactory, Limits, StreamStatus

PATH = "/test.Echo/Chat"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x6, 0x7, 0x8, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED = 0x0, 0x1, 0x3, 0x5
REFUSED_STREAM, ENHANCE_YOUR_CALM, COMPRESSION_ERROR = 0x7, 0xB, 0x9


class Echo:
    """Upper-cases each message; ``big:N`` answers N bytes; ``wait`` waits on
    ``gate`` (and records its cancellation)."""

    cancelled: ClassVar[list[int]] = []

    async def handle(self, message: bytes) -> bytes:
        if message.startswith(b"big:"):
            return b"b" * int(message[4:])
        if message == b"wait":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                Echo.cancelled.append(1)
                raise
        if message == b"fail":
            raise GrpcError(StreamStatus.INVALID_ARGUMENT, "failed")
        return message.upper()


@dataclass
class Running:
    server: H2GrpcServer
    port: int
    loop: asyncio.AbstractEventLoop

    def call(self, coro_fn: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro_fn, self.loop).result(10)  # type: ignore[arg-type]

    def connections(self) -> int:
        async def count() -> int:
            return self.server.open_connections()

        return int(self.call(count()))  # type: ignore[call-overload]


@contextmanager
def serving(
    limits: Limits | None = None,
    handlers: Mapping[str, HandlerFactory] | None = None,
    max_message_bytes: int = 1 << 20,
    on_shrink: Callable[[], object] | None = None,
) -> Iterator[Running]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = H2GrpcServer(
        handlers or {PATH: lambda headers: Echo()},
        max_message_bytes=max_message_bytes,
        limits=limits or Limits(),
        on_shrink=on_shrink,
    )
    port = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)
    try:
        yield Running(server, port, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0.2), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3) + bytes((kind, flags)) + stream_id.to_bytes(4) + payload


def message(body: bytes) -> bytes:
    return len(body).to_bytes(5) + body


REQUEST_HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", PATH),
    (":authority", "x"),
    ("content-type", "application/grpc"),
]


class Peer:
    """One raw connection. Every read has a deadline; nothing here waits unbounded."""

    def __init__(self, port: int, *, preface: bool = True, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.encoder = Encoder()
        self.buf = b""
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.eof = False
        if preface:
            self.send(PREFACE + frame(SETTINGS, 0, 0))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def headers(
        self, stream_id: int, headers: list[tuple[str, str]] | None = None, flags: int = END_HEADERS
    ) -> bytes:
        return frame(HEADERS, flags, stream_id, self.encoder.encode(headers or REQUEST_HEADERS))

    def read(self, until: object = None, timeout: float = 5.0) -> list[tuple[int, int, int, bytes]]:
        """Read frames until ``until(frames)`` is true, EOF, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            if until is not None and until(self.frames):  # type: ignore[operator]
                break
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
            while len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3])
                if len(self.buf) < 9 + length:
                    break
                kind, flags = self.buf[3], self.buf[4]
                stream_id = int.from_bytes(self.buf[5:9]) & 0x7FFFFFFF
                self.frames.append((kind, flags, stream_id, self.buf[9 : 9 + length]))
                self.buf = self.buf[9 + length :]
        return self.frames

    def goaway(self, timeout: float = 5.0) -> int | None:
        """The error code of the server's GOAWAY, once it closes; None if none came."""
        self.read(until=lambda fs: False, timeout=timeout)
        codes = [int.from_bytes(p[4:8]) for k, _, _, p in self.frames if k == GOAWAY]
        return codes[-1] if codes else None

    def resets(self) -> dict[int, int]:
        return {s: int.from_bytes(p) for k, _, s, p in self.frames if k == RST_STREAM}

    def messages(self, stream_id: int) -> bytes:
        return b"".join(p for k, _, s, p in self.frames if k == DATA and s == stream_id)


def grpc_call(port: int, body: bytes = b"ping", timeout: float = 5.0) -> list[bytes]:
    """A real client's call (grpcio): the server is still serving."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return list(channel.stream_stream(PATH)(iter([body]), timeout=timeout))
