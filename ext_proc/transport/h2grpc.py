"""A small HTTP/2 server for one bidirectional-streaming gRPC method, on asyncio.

Why not grpcio: measured on the benchmark (``bench/gateway_bench.py``), grpcio's
``grpc.aio`` server costs about 0.67 ms of CPU per ext_proc stream before any
Archway code runs, even answering with prebuilt bytes: every read and write of
every stream crosses from grpc's poller thread to the event loop and back. An
ext_proc stream is tiny and always the same shape (Envoy opens a stream, sends
one message per phase, reads one answer per message, then closes or resets),
so a server that parses HTTP/2 frames on the event loop thread itself, answers
from the same loop iteration and coalesces writes costs a fraction of that.

What it implements, for cleartext HTTP/2 with prior knowledge (how Envoy and
gRPC clients talk to a ``grpc_service``): the connection preface, SETTINGS,
PING, GOAWAY, RST_STREAM, WINDOW_UPDATE and flow control in both directions,
HEADERS with CONTINUATION and padding, DATA with padding, gRPC message framing
(uncompressed only; compression is never offered to the client) and trailers.
HPACK decoding is ``_HeaderDecoder`` below, with the static table and the
Huffman code from the ``hpack`` package; what this server sends is encoded
without the dynamic table, so it never has to track the peer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import struct
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from hpack.exceptions import HPACKError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = [
    "DEFAULT_MAX_CONCURRENT_STREAMS",
    "GrpcError",
    "H2GrpcServer",
    "StreamHandler",
    "StreamStatus",
]

log = logging.getLogger("archway.h2grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113, section 6).
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
# Flags.
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# SETTINGS identifiers.
_HEADER_TABLE_SIZE, _ENABLE_PUSH, _MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
_INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE, _MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
# Error codes.
_NO_ERROR, _PROTOCOL_ERROR, _FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
_FRAME_SIZE_ERROR, _REFUSED_STREAM, _COMPRESSION_ERROR = 0x6, 0x7, 0x9

_DEFAULT_WINDOW = 65_535
_MAX_WINDOW = 2**31 - 1
_DEFAULT_MAX_FRAME = 16_384
_OUR_MAX_FRAME = 1 << 20
"""Bigger frames than HTTP/2's 16 KiB default: a whole buffered body arrives in
fewer frames, so fewer trips through the parser."""
_WINDOW_REFILL = 1 << 24
"""Received bytes after which the window is topped up again. The windows start at
the maximum, so a sender never waits on this server."""
_MAX_HEADER_BLOCK = 64 * 1024
DEFAULT_MAX_CONCURRENT_STREAMS = 1024
"""Streams open at once on one connection. Envoy opens one ext_proc stream per
request in flight and opens another connection when a connection is full, so
the cap only bounds what one misbehaving client can hold open."""

_frame_head = struct.Struct(">IBI")  # length (24 bits) and type, flags, stream id


def _frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    head = (len(payload) << 8 | kind).to_bytes(4) + bytes((flags,)) + stream_id.to_bytes(4)
    return head + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK "literal header field without indexing, new name" (RFC 7541, 6.2.2)."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# ``:status: 200`` is entry 8 of HPACK's static table.
_RESPONSE_HEADERS = b"\x88" + _literal(b"content-type", b"application/grpc")
_OK_TRAILERS = _literal(b"grpc-status", b"0")


_STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_HUFFMAN_MEMO_MAX = 1024


class _DecodeError(Exception):
    pass


class _HeaderDecoder:
    """An HPACK decoder (RFC 7541) for a client's header blocks.

    Envoy sends ``:path`` on every stream as a Huffman-coded literal that is
    never indexed; ``hpack``'s pure-Python Huffman decoder made that one
    header cost more than the rest of the stream's frames. The same coded
    strings recur, so their decoding is memoised.
    """

    __slots__ = ("_huffman", "_max_size", "_size", "_table")

    def __init__(self, max_size: int = 4096) -> None:
        self._table: list[tuple[bytes, bytes]] = []
        """The dynamic table, newest entry first."""
        self._size = 0
        self._max_size = max_size
        self._huffman: dict[bytes, bytes] = {}

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        i, end = 0, len(block)
        try:
            while i < end:
                b = block[i]
                if b & 0x80:  # indexed field
                    index, i = self._int(block, i, 7)
                    out.append(self._entry(index))
                elif b & 0x40:  # literal, added to the table
                    index, i = self._int(block, i, 6)
                    name, i = (self._entry(index)[0], i) if index else self._string(block, i)
                    value, i = self._string(block, i)
                    out.append((name, value))
                    self._add(name, value)
                elif b & 0x20:  # table size update
                    size, i = self._int(block, i, 5)
                    if size > 4096:
                        raise _DecodeError("table size above SETTINGS_HEADER_TABLE_SIZE")
                    self._max_size = size
                    self._evict()
                else:  # literal, not indexed or never indexed
                    index, i = self._int(block, i, 4)
                    name, i = (self._entry(index)[0], i) if index else self._string(block, i)
                    value, i = self._string(block, i)
                    out.append((name, value))
        except IndexError:
            raise _DecodeError("truncated header block") from None
        return out

    @staticmethod
    def _int(block: bytes, i: int, bits: int) -> tuple[int, int]:
        mask = (1 << bits) - 1
        value = block[i] & mask
        i += 1
        if value < mask:
            return value, i
        shift = 0
        while True:
            b = block[i]
            i += 1
            value += (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value, i
            if shift > 28:
                raise _DecodeError("integer too large")

    def _string(self, block: bytes, i: int) -> tuple[bytes, int]:
        huffman = block[i] & 0x80
        length, i = self._int(block, i, 7)
        if i + length > len(block):
            raise _DecodeError("truncated string")
        raw = block[i : i + length]
        if not huffman:
            return raw, i + length
        decoded = self._huffman.get(raw)
        if decoded is None:
            try:
                decoded = decode_huffman(raw)
            except HPACKError as exc:
                raise _DecodeError(str(exc)) from None
            if len(self._huffman) >= _HUFFMAN_MEMO_MAX:
                self._huffman.clear()
            self._huffman[raw] = decoded
        return decoded, i + length

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if index <= 0:
            raise _DecodeError("header index 0")
        if index <= len(_STATIC_TABLE):
            return _STATIC_TABLE[index - 1]
        dynamic = index - len(_STATIC_TABLE) - 1
        if dynamic >= len(self._table):
            raise _DecodeError(f"header index {index} out of range")
        return self._table[dynamic]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        if size > self._max_size:
            self._table.clear()
            self._size = 0
            return
        self._table.insert(0, (name, value))
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max_size:
            name, value = self._table.pop()
            self._size -= len(name) + len(value) + 32


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


def _trailers(status: int, message: str = "") -> bytes:
    if status == StreamStatus.OK:
        return _OK_TRAILERS
    block = _literal(b"grpc-status", str(status).encode())
    if message:
        # grpc-message is percent-encoded (gRPC over HTTP/2 spec).
        encoded = "".join(
            c if 0x20 <= ord(c) < 0x7F and c != "%" else "".join(f"%{b:02X}" for b in c.encode())
            for c in message
        )
        block += _literal(b"grpc-message", encoded.encode())
    return block


class _Stream:
    __slots__ = (
        "busy",
        "handler",
        "headers_sent",
        "id",
        "inbox",
        "outbox",
        "recv_consumed",
        "remote_closed",
        "rx",
        "send_window",
        "trailers",
    )

    def __init__(self, stream_id: int, handler: StreamHandler, send_window: int) -> None:
        self.id = stream_id
        self.handler = handler
        self.rx = bytearray()
        self.inbox: list[bytes] = []
        """Whole request messages waiting for the one in progress."""
        self.busy = False
        self.remote_closed = False
        self.headers_sent = False
        self.outbox = bytearray()
        """Response DATA bytes that flow control has held back."""
        self.trailers: bytes | None = None
        """Trailers to send once ``outbox`` drains."""
        self.send_window = send_window
        self.recv_consumed = 0


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


RequestHeaders = Sequence[tuple[bytes, bytes]]
"""A stream's request headers as HPACK decoded them: gRPC metadata included."""

HandlerFactory = Callable[[RequestHeaders], StreamHandler]
"""Makes the handler of one new stream of a method, from its request headers."""


class _Unimplemented:
    async def handle(self, message: bytes) -> bytes:
        raise GrpcError(StreamStatus.UNIMPLEMENTED, "unknown method")


@dataclass
class _ServerState:
    handlers: Mapping[bytes, HandlerFactory]
    max_message_bytes: int
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    connections: set[_Connection] = field(default_factory=set)
    closing: bool = False


_READ_SIZE = 256 * 1024
"""What one socket read may bring: a whole buffered request body in few reads."""


class _Connection(asyncio.BufferedProtocol):
    """Reads into one buffer of its own: a plain ``Protocol`` gets a new 256 KiB
    ``bytes`` per read, which glibc maps and unmaps each time (14 % of a
    worker's CPU at one connection, in ``perf``)."""

    def __init__(self, state: _ServerState) -> None:
        self._state = state
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._inbox = memoryview(bytearray(_READ_SIZE))
        self._buf = bytearray()
        self._preface_seen = False
        self._streams: dict[int, _Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._out: list[bytes] = []
        self._flush_pending = False
        self._decoder = _HeaderDecoder()
        self._header_block: bytearray | None = None
        self._header_stream = 0
        self._header_end_stream = False
        self._last_stream_id = 0
        self._peer_initial_window = _DEFAULT_WINDOW
        self._peer_max_frame = _DEFAULT_MAX_FRAME
        self._send_window = _DEFAULT_WINDOW
        self._recv_consumed = 0
        self._goaway_sent = False
        self._reading = False
        self.idle = asyncio.Event()
        self.idle.set()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not subclass asyncio's.
        self._transport = cast(asyncio.Transport, transport)
        self._state.connections.add(self)
        settings = struct.pack(
            ">HIHIHIHI",
            _ENABLE_PUSH,
            0,
            _MAX_CONCURRENT_STREAMS,
            self._state.max_concurrent_streams,
            _INITIAL_WINDOW_SIZE,
            _MAX_WINDOW,
            _MAX_FRAME_SIZE,
            _OUR_MAX_FRAME,
        )
        self._out.append(_frame(_SETTINGS, 0, 0, settings))
        self._out.append(_frame(_WINDOW_UPDATE, 0, 0, (_MAX_WINDOW - _DEFAULT_WINDOW).to_bytes(4)))
        if self._state.closing:
            self._goaway(_NO_ERROR)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)
        for task in self._tasks:
            task.cancel()
        self._streams.clear()
        self.idle.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._inbox

    def buffer_updated(self, nbytes: int) -> None:
        self._buf += self._inbox[:nbytes]
        self._reading = True
        try:
            self._read_frames()
        except _ConnectionError as exc:
            log.warning("closing ext_proc connection: %s", exc)
            self._goaway(exc.code)
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        finally:
            self._reading = False
        self._flush()

    def _read_frames(self) -> None:
        buf = self._buf
        if not self._preface_seen:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    raise _ConnectionError(_PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if not buf.startswith(PREFACE):
                raise _ConnectionError(_PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            del buf[: len(PREFACE)]
            self._preface_seen = True
        pos = 0
        end = len(buf)
        try:
            with memoryview(buf) as view:
                while end - pos >= 9:
                    word, flags, stream_id = _frame_head.unpack_from(buf, pos)
                    length, kind = word >> 8, word & 0xFF
                    if length > _OUR_MAX_FRAME:
                        raise _ConnectionError(_FRAME_SIZE_ERROR, "frame larger than advertised")
                    if end - pos - 9 < length:
                        break
                    start, pos = pos + 9, pos + 9 + length
                    stream_id &= 0x7FFFFFFF
                    if kind == _DATA and self._header_block is None:
                        # A request body arrives as many DATA frames: each is
                        # copied once, straight into its stream's message buffer.
                        with view[start:pos] as payload:
                            self._on_data(flags, stream_id, payload)
                    else:
                        self._on_frame(kind, flags, stream_id, bytes(view[start:pos]))
        finally:
            del buf[:pos]

    # -- frames in --

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and kind != _CONTINUATION:
            raise _ConnectionError(_PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == _DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == _HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == _CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == _RST_STREAM:
            # How Envoy ends every ext_proc stream once its request is done.
            self._streams.pop(stream_id, None)
            if not self._streams:
                self.idle.set()
        elif kind == _SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == _PING:
            if len(payload) != 8:
                raise _ConnectionError(_FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & _ACK:
                self._out.append(_frame(_PING, _ACK, 0, payload))
        elif kind == _WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == _GOAWAY:
            self._goaway(_NO_ERROR)
        elif kind == _PUSH_PROMISE:
            raise _ConnectionError(_PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 requires.

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(_PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & _ACK:
            return
        if len(payload) % 6:
            raise _ConnectionError(_FRAME_SIZE_ERROR, "malformed SETTINGS")
        for i in range(0, len(payload), 6):
            ident, value = struct.unpack_from(">HI", payload, i)
            if ident == _INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ConnectionError(_FLOW_CONTROL_ERROR, "window too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif ident == _MAX_FRAME_SIZE:
                if not _DEFAULT_MAX_FRAME <= value <= 16_777_215:
                    raise _ConnectionError(_PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self._peer_max_frame = value
            elif ident == _HEADER_TABLE_SIZE:
                pass  # nothing is ever added to the peer's decoder table
        self._out.append(_frame(_SETTINGS, _ACK, 0))
        for stream in list(self._streams.values()):
            self._pump(stream)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(_FRAME_SIZE_ERROR, "malformed WINDOW_UPDATE")
        increment = int.from_bytes(payload) & 0x7FFFFFFF
        if stream_id == 0:
            self._send_window += increment
            if self._send_window > _MAX_WINDOW:
                raise _ConnectionError(_FLOW_CONTROL_ERROR, "connection window overflow")
            for stream in list(self._streams.values()):
                self._pump(stream)
            return
        target = self._streams.get(stream_id)
        if target is not None:
            target.send_window += increment
            self._pump(target)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(_PROTOCOL_ERROR, "HEADERS on stream 0")
        start, stop = 0, len(payload)
        if flags & _PADDED:
            if not payload:
                raise _ConnectionError(_PROTOCOL_ERROR, "bad padding")
            start, stop = 1, len(payload) - payload[0]
        if flags & _PRIORITY_FLAG:
            start += 5
        if start > stop:
            raise _ConnectionError(_PROTOCOL_ERROR, "bad padding")
        self._header_block = bytearray(payload[start:stop])
        self._header_stream = stream_id
        self._header_end_stream = bool(flags & _END_STREAM)
        if flags & _END_HEADERS:
            self._end_headers()

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is None or stream_id != self._header_stream:
            raise _ConnectionError(_PROTOCOL_ERROR, "unexpected CONTINUATION")
        self._header_block += payload
        if len(self._header_block) > _MAX_HEADER_BLOCK:
            raise _ConnectionError(_PROTOCOL_ERROR, "header block too large")
        if flags & _END_HEADERS:
            self._end_headers()

    def _end_headers(self) -> None:
        assert self._header_block is not None
        block, self._header_block = bytes(self._header_block), None
        stream_id, end_stream = self._header_stream, self._header_end_stream
        try:
            # Every block is decoded, even a stream's trailers: HPACK state is
            # shared by the whole connection.
            headers = self._decoder.decode(block)
        except _DecodeError as exc:
            raise _ConnectionError(_COMPRESSION_ERROR, f"bad header block: {exc}") from None
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client end its half
            if end_stream:
                self._remote_close(stream)
            return
        if stream_id <= self._last_stream_id or not stream_id & 1:
            if stream_id % 2 == 0:
                raise _ConnectionError(_PROTOCOL_ERROR, "even stream id from a client")
            return  # a stream this connection already finished: ignore
        self._last_stream_id = stream_id
        if self._goaway_sent or len(self._streams) >= self._state.max_concurrent_streams:
            # Over the advertised limit, a stream is refused, not the connection
            # (RFC 9113, 5.1.2): the client may retry it once others finish.
            self._out.append(_frame(_RST_STREAM, 0, stream_id, _REFUSED_STREAM.to_bytes(4)))
            return
        path = next((v for k, v in headers if k == b":path"), b"")
        factory = self._state.handlers.get(path)
        handler = factory(headers) if factory is not None else _Unimplemented()
        stream = _Stream(stream_id, handler, self._peer_initial_window)
        self._streams[stream_id] = stream
        self.idle.clear()
        if factory is None:
            self._finish(stream, StreamStatus.UNIMPLEMENTED, f"unknown method {path.decode()!r}")
            return
        if end_stream:
            self._remote_close(stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes | memoryview) -> None:
        if stream_id == 0:
            raise _ConnectionError(_PROTOCOL_ERROR, "DATA on stream 0")
        self._recv_consumed += len(payload)
        if self._recv_consumed >= _WINDOW_REFILL:
            self._out.append(_frame(_WINDOW_UPDATE, 0, 0, self._recv_consumed.to_bytes(4)))
            self._recv_consumed = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # reset or finished by us: its data is dropped
        stream.recv_consumed += len(payload)
        if stream.recv_consumed >= _WINDOW_REFILL and not flags & _END_STREAM:
            self._out.append(_frame(_WINDOW_UPDATE, 0, stream_id, stream.recv_consumed.to_bytes(4)))
            stream.recv_consumed = 0
        if flags & _PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(_PROTOCOL_ERROR, "bad padding")
            payload = payload[1 : len(payload) - payload[0]]
        rx = stream.rx
        rx += payload
        limit = self._state.max_message_bytes
        while len(rx) >= 5:
            if rx[0] != 0:
                self._finish(stream, StreamStatus.UNIMPLEMENTED, "compressed messages")
                return
            size = int.from_bytes(rx[1:5])
            if size > limit:
                self._finish(
                    stream,
                    StreamStatus.RESOURCE_EXHAUSTED,
                    f"message of {size} bytes exceeds the limit of {limit}",
                )
                return
            if len(rx) < 5 + size:
                break
            with memoryview(rx) as view:
                message = bytes(view[5 : 5 + size])
            del rx[: 5 + size]
            self._on_message(stream, message)
        if flags & _END_STREAM and stream.id in self._streams:
            self._remote_close(stream)

    # -- streams --

    def _on_message(self, stream: _Stream, message: bytes) -> None:
        if stream.busy:
            # ext_proc never sends the next message before its answer, but
            # gRPC allows it: keep the order.
            stream.inbox.append(message)
            return
        stream.busy = True
        task = _start_task(self._loop, self._answer(stream, message))
        if task is not None and not task.done():
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, stream: _Stream, message: bytes) -> None:
        # The answer is sent from the task itself: a done callback would cost
        # one more trip through the event loop per message.
        answer: bytes | None = None
        failure = (StreamStatus.OK, "")
        try:
            answer = await stream.handler.handle(message)
        except GrpcError as exc:
            failure = (exc.status, exc.message)
        except Exception:
            log.exception("ext_proc handler failed")
            failure = (StreamStatus.INTERNAL, "internal error")
        stream.busy = False
        if self._streams.get(stream.id) is not stream:
            return  # reset while the handler ran
        if answer is None:
            self._finish(stream, *failure)
        else:
            self._send_message(stream, answer)
            if stream.inbox:
                self._on_message(stream, stream.inbox.pop(0))
            elif stream.remote_closed:
                self._finish(stream, StreamStatus.OK)
        if self._reading:
            pass  # buffer_updated writes once it has handled the whole read
        elif len(self._tasks) <= 1:
            self._flush()  # nothing else in flight to share a write with
        else:
            self._schedule_flush()

    def _remote_close(self, stream: _Stream) -> None:
        stream.remote_closed = True
        if not stream.busy and not stream.inbox:
            self._finish(stream, StreamStatus.OK)

    def _send_message(self, stream: _Stream, message: bytes) -> None:
        if not stream.headers_sent:
            stream.headers_sent = True
            self._out.append(_frame(_HEADERS, _END_HEADERS, stream.id, _RESPONSE_HEADERS))
        outbox = stream.outbox
        outbox += len(message).to_bytes(5)  # flag byte 0: not compressed
        outbox += message
        self._pump(stream)

    def _finish(self, stream: _Stream, status: int, message: str = "") -> None:
        """End the stream with trailers once its data has gone out."""
        if status != StreamStatus.OK:
            stream.inbox.clear()
            log.debug("stream %d ends with gRPC status %d: %s", stream.id, status, message)
        if not stream.headers_sent and not stream.outbox:
            # Trailers-only response: one HEADERS frame carries status and trailers.
            stream.headers_sent = True
            stream.trailers = _RESPONSE_HEADERS + _trailers(status, message)
        else:
            stream.trailers = _trailers(status, message)
        self._pump(stream)

    def _pump(self, stream: _Stream) -> None:
        """Send what flow control allows of the stream's data, then its trailers."""
        outbox = stream.outbox
        sent = 0
        with memoryview(outbox) as view:
            # Frames are cut from a view: each byte is copied once, into its frame.
            while sent < len(view):
                room = min(stream.send_window, self._send_window, self._peer_max_frame)
                if room <= 0:
                    break
                with view[sent : sent + room] as chunk:
                    size = len(chunk)
                    self._out.append(_frame(_DATA, 0, stream.id, chunk))
                sent += size
                stream.send_window -= size
                self._send_window -= size
        del outbox[:sent]
        if outbox:
            return
        if stream.trailers is not None:
            self._out.append(
                _frame(_HEADERS, _END_HEADERS | _END_STREAM, stream.id, stream.trailers)
            )
            stream.trailers = None
            if stream.remote_closed:
                del self._streams[stream.id]
            else:
                # Our half is closed; the client's RST_STREAM or END_STREAM
                # (ignored from now on) follows.
                self._streams.pop(stream.id, None)
                self._out.append(_frame(_RST_STREAM, 0, stream.id, _NO_ERROR.to_bytes(4)))
            if not self._streams:
                self.idle.set()

    # -- output --

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _goaway(self, code: int) -> None:
        if not self._goaway_sent:
            self._goaway_sent = True
            payload = self._last_stream_id.to_bytes(4) + code.to_bytes(4)
            self._out.append(_frame(_GOAWAY, 0, 0, payload))

    def shutdown(self) -> None:
        """Refuse new streams; the ones in flight finish."""
        self._goaway(_NO_ERROR)
        self._flush()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _start_task(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[object, object, None]
) -> asyncio.Task[None] | None:
    """Runs ``coro`` at once, inside buffer_updated, until it first waits, and
    only then makes it a task; ``None`` when it finished without waiting. The
    ext_proc phases never wait (a router call does), so the answer joins the
    same write as everything else this read produced, with no trip through the
    event loop: one loop iteration less per message. Python 3.12's eager tasks
    do this natively; this is their first step for 3.11."""
    context = contextvars.copy_context()
    try:
        waiting_on = context.run(coro.send, None)
    except StopIteration:
        return None
    except Exception:
        log.exception("ext_proc stream task failed")
        return None
    # The task's steps run in the same context as the first: a value set before
    # the first wait is still there after it (and can be reset there).
    return loop.create_task(_resume(coro, waiting_on), context=context)


async def _resume(coro: Coroutine[object, object, None], waiting_on: object) -> None:
    """Drives ``coro`` on from its first wait, as a task's steps would: each step
    resumed once what it waits on is done."""
    while True:
        try:
            if asyncio.isfuture(waiting_on):
                # Task.__step clears this flag on a future it is given to wait on.
                waiting_on._asyncio_future_blocking = False
                # Waits without taking the outcome, which the coroutine reads.
                await asyncio.wait((waiting_on,))
            else:  # a bare yield: give the loop one turn
                await asyncio.sleep(0)
        except asyncio.CancelledError as cancelled:
            if asyncio.isfuture(waiting_on):
                waiting_on.cancel()
            try:
                waiting_on = coro.throw(cancelled)
            except StopIteration:
                return
            continue
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return


if sys.version_info >= (3, 12):
    _start_task = asyncio.eager_task_factory  # type: ignore[assignment]


class H2GrpcServer:
    """Serves gRPC methods by path (e.g.
    ``/envoy.service.ext_proc.v3.ExternalProcessor/Process``) on ``host:port``.
    Each stream gets a handler from its method's factory, which sees the
    stream's request headers; a unary method is a stream of one message."""

    def __init__(
        self,
        handlers: Mapping[str, HandlerFactory],
        *,
        max_message_bytes: int,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
    ) -> None:
        if max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        self._state = _ServerState(
            {path.encode(): factory for path, factory in handlers.items()},
            max_message_bytes,
            max_concurrent_streams,
        )
        self._servers: list[asyncio.Server] = []

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen and return the bound port (``port`` 0 picks a free one).
        Each call adds one more address to serve on."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self._state),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, let streams in flight finish for up to ``grace`` seconds, then close."""
        self._state.closing = True
        for server in self._servers:
            server.close()
        connections = list(self._state.connections)
        for conn in connections:
            conn.shutdown()
        if connections and grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(c.idle.wait() for c in connections)), grace)
        for conn in connections:
            conn.abort()
        for server in self._servers:
            await server.wait_closed()
