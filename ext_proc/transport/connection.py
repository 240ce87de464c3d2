"""One HTTP/2 connection's state machine (RFC 9113): frames in, streams and
their flow control, frames out. Everything here runs on the event loop
thread, inside ``buffer_updated`` or a stream's handler task; I/O is the
transport's, accepting is the server's (``server``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

from ext_proc.transport.fields import malformed_request, malformed_trailers
from ext_proc.transport.frames import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEAD,
    HEAD_SIZE,
    HEADERS,
    INTERNAL_ERROR,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    H2ConnectionError,
    frame,
    goaway,
    rst_stream,
    unpad,
    window_update,
)
from ext_proc.transport.grpc import (
    RESPONSE_HEADERS,
    GrpcError,
    HandlerFactory,
    StreamHandler,
    StreamStatus,
    split_messages,
    trailers,
)
from ext_proc.transport.hpack import DecodeError, HeaderDecoder, HeaderListTooLarge, HuffmanMemo
from ext_proc.transport.limits import ControlBudget, Limits, LogBudget, ResetGuard
from ext_proc.transport.settings import (
    INITIAL_WINDOW_SIZE,
    MAX_FRAME_SIZE,
    OUR_MAX_FRAME,
    PeerSettings,
    advertised,
)
from ext_proc.transport.tasks import start_task
from ext_proc.transport.windows import ReceiveWindow, connection_window, stream_window

__all__ = ["Connection", "Shared"]

log = logging.getLogger("archway.h2grpc")
_ENDED_REMEMBERED = 64
_closing_log = LogBudget(log)


@dataclass
class Shared:
    """What a server's connections share: one per worker."""

    handlers: Mapping[bytes, HandlerFactory]
    max_message_bytes: int
    limits: Limits
    connections: dict[Connection, None] = field(default_factory=dict)
    """Open connections, oldest first (the order eviction looks in)."""
    closing: bool = False

    def __post_init__(self) -> None:
        self.huffman = HuffmanMemo(
            self.limits.huffman_memo_entries, self.limits.huffman_memo_max_string
        )
        # One read buffer for every connection: a read is copied out of it in
        # buffer_updated, before the loop reads another socket, so an idle
        # connection costs no buffer at all.
        self.read_buffer = memoryview(bytearray(self.limits.read_size))
        self.stream_window = stream_window(self.max_message_bytes)
        self.connection_window = connection_window(self.max_message_bytes)
        self.settings = advertised(
            self.limits.max_concurrent_streams, self.stream_window, self.limits.max_header_list
        )


class _Unimplemented:
    async def handle(self, message: bytes) -> bytes:
        # Never the path: a reply must not echo what the client sent.
        raise GrpcError(StreamStatus.UNIMPLEMENTED, "unknown method")


class _Stream:
    __slots__ = (
        "busy",
        "handler",
        "headers_sent",
        "held",
        "id",
        "inbox",
        "outbox",
        "recv_available",
        "recv_pending",
        "remote_closed",
        "rx",
        "send_delta",
        "task",
        "trailers",
    )

    def __init__(self, stream_id: int, handler: StreamHandler, window: int) -> None:
        self.id = stream_id
        self.handler = handler
        self.rx = bytearray()
        self.inbox: list[bytes] = []
        """Whole request messages waiting for the one in progress."""
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self.remote_closed = False
        self.headers_sent = False
        self.outbox = bytearray()
        """Response DATA bytes that flow control has held back."""
        self.trailers: bytes | None = None
        """Trailers to send once ``outbox`` drains."""
        self.send_delta = 0
        """The stream's send window less the peer's SETTINGS_INITIAL_WINDOW_SIZE:
        a change of that setting then moves every stream's window at no cost."""
        # The stream's receive window, as ``ReceiveWindow`` keeps the
        # connection's: two ints here, as every stream has one.
        self.recv_available = window
        self.recv_pending = 0
        self.held = 0
        """Bytes received on the stream and not yet given back to the window."""


class Connection(asyncio.BufferedProtocol):
    # No instance dict: an idle connection is mostly this object.
    __slots__ = (
        "_blocked",
        "_budget",
        "_buf",
        "_clock",
        "_continuations",
        "_decoder",
        "_drained",
        "_ended",
        "_flush_pending",
        "_goaway_sent",
        "_header_block",
        "_header_end_stream",
        "_header_stream",
        "_idle_mark",
        "_last_stream_id",
        "_limits",
        "_loop",
        "_max_send_delta",
        "_opened_at",
        "_out",
        "_out_bytes",
        "_peer",
        "_preface_seen",
        "_progress",
        "_reading",
        "_recv",
        "_resets",
        "_send_window",
        "_shared",
        "_stall_mark",
        "_streams",
        "_tasks",
        "_transport",
        "_write_paused",
    )

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._limits = shared.limits
        self._loop = asyncio.get_running_loop()
        self._clock = self._loop.time
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._preface_seen = False
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, _Stream] = {}
        """Streams with response bytes waiting on a send window: the only ones
        a WINDOW_UPDATE or SETTINGS needs to look at."""
        self._ended: dict[int, bool] = {}
        """Streams closed after the peer's END_STREAM (False) or RST_STREAM
        (True), newest last."""
        # A dict, not a set: 64 bytes empty against 216, on every idle connection.
        self._tasks: dict[asyncio.Task[None], None] = {}
        self._out: list[bytes] = []
        self._out_bytes = 0
        """Response bytes added to ``_out`` while reading: past the write
        buffer's high-water mark they are written at once, so that a pause
        stops the read in the middle instead of after a whole read's answers."""
        self._flush_pending = False
        self._decoder = HeaderDecoder(shared.huffman, self._limits.max_header_list)
        self._header_block: bytearray | None = None
        self._header_stream = 0
        self._header_end_stream = False
        self._continuations = 0
        self._last_stream_id = 0
        self._peer = PeerSettings()
        self._max_send_delta = 0
        """At least every open stream's ``send_delta``: checked before a SETTINGS
        raise of the initial window could overflow one (6.9.2)."""
        self._send_window = DEFAULT_WINDOW
        self._recv = ReceiveWindow(shared.connection_window)
        self._budget = ControlBudget(self._limits, self._clock())
        self._resets = ResetGuard(self._limits)
        self._goaway_sent = False
        self._reading = False
        self._write_paused = False
        # Timeouts are judged by the server's sweep, from counters: the hot
        # path never reads the clock for them.
        self._opened_at = self._clock()
        self._progress = 0
        """Messages handed to handlers, and output drains: what a stall lacks."""
        self._stall_mark: tuple[int, float] | None = None
        self._idle_mark: tuple[int, float] | None = None
        self._drained: asyncio.Future[None] | None = None
        """Made only when ``wait_idle`` is waiting: an Event per connection
        would cost every idle one its deque."""

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not subclass asyncio's.
        self._transport = cast(asyncio.Transport, transport)
        # The connection cap was applied when the socket was accepted
        # (``H2GrpcServer``), so that a socket counts from its first moment.
        self._transport.set_write_buffer_limits(high=self._limits.write_high_water)
        self._shared.connections[self] = None
        self._out.append(self._shared.settings)
        extra = self._recv.size - DEFAULT_WINDOW
        if extra > 0:
            self._out.append(window_update(0, extra))
        if self._shared.closing:
            self._goaway(NO_ERROR)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._shared.connections.pop(self, None)
        for task in list(self._tasks):
            task.cancel()
        self._streams.clear()
        self._blocked.clear()
        self._buf = bytearray()
        self._notify_idle()

    async def wait_idle(self) -> None:
        """Return once no stream is open (at once when none is)."""
        if not self._streams:
            return
        if self._drained is None:
            self._drained = self._loop.create_future()
        await asyncio.shield(self._drained)

    def _notify_idle(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._shared.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._buf += self._shared.read_buffer[:nbytes]
        self._reading = True
        try:
            self._read_frames()
        except H2ConnectionError as exc:
            self._fail(exc.code, str(exc))
            return
        except Exception as exc:  # a bug here must cost one connection, not the worker
            _closing_log.warning(
                "closing ext_proc connection after an internal error: %r", exc, exc_info=True
            )
            self._fail(INTERNAL_ERROR, "internal error")
            return
        finally:
            self._reading = False
        self._flush()

    def pause_writing(self) -> None:
        # The peer is not reading what it asked for: stop reading what it asks.
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._progress += 1
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
            if self._buf:
                self.buffer_updated(0)  # the frames the pause left unread

    # -- timeouts and eviction (driven by the server) --

    def expired(self, now: float) -> str | None:
        """Why this connection should be closed now, if it should."""
        if not self._preface_seen:
            if now - self._opened_at > self._limits.handshake_timeout_s:
                return "no connection preface in time"
            return None
        if self._write_paused or ((self._recv.held or self._buf) and not self._tasks):
            # Held bytes and no handler at work: the peer owes the rest of a
            # message, or has not read its answers.
            mark = self._stall_mark
            if mark is None or mark[0] != self._progress:
                self._stall_mark = (self._progress, now)
            elif now - mark[1] > self._limits.stall_timeout_s:
                return "no progress on a partly sent message or unread output"
        else:
            self._stall_mark = None
        if self._streams:
            self._idle_mark = None
            return None
        mark = self._idle_mark
        if mark is None or mark[0] != self._last_stream_id:
            self._idle_mark = (self._last_stream_id, now)
        elif now - mark[1] > self._limits.idle_timeout_s:
            return "idle"
        return None

    @property
    def preface_seen(self) -> bool:
        return self._preface_seen

    @property
    def evictable(self) -> bool:
        """Closing it loses no request: no preface yet, or no open stream."""
        return not self._preface_seen or not self._streams

    def close(self, reason: str, code: int = NO_ERROR) -> None:
        log.debug("closing ext_proc connection: %s", reason)
        if self._preface_seen:
            self._goaway(code)
        self._flush()
        if self._write_paused and self._transport is not None:
            # The peer does not read: waiting for the output to drain would
            # hold it forever.
            self._shared.connections.pop(self, None)
            self._transport.abort()
        else:
            self.abort()

    # -- frames in --

    def _read_frames(self) -> None:
        buf = self._buf
        if not self._preface_seen:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    raise H2ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if not buf.startswith(PREFACE):
                raise H2ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            del buf[: len(PREFACE)]
            self._preface_seen = True
        pos = 0
        end = len(buf)
        try:
            while end - pos >= HEAD_SIZE and not self._write_paused:
                word, flags, stream_id = HEAD.unpack_from(buf, pos)
                length, kind = word >> 8, word & 0xFF
                if length > OUR_MAX_FRAME:
                    raise H2ConnectionError(FRAME_SIZE_ERROR, "frame larger than advertised")
                if end - pos - HEAD_SIZE < length:
                    break
                payload = bytes(buf[pos + HEAD_SIZE : pos + HEAD_SIZE + length])
                pos += HEAD_SIZE + length
                self._on_frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
        finally:
            del buf[:pos]

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and kind != CONTINUATION:
            raise H2ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif kind == SETTINGS:
            self._control()
            self._on_settings(flags, stream_id, payload)
        elif kind == PING:
            self._control()
            if stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self._out.append(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._control()
            self._on_window_update(stream_id, payload)
        elif kind == PRIORITY:
            self._control()
            if not stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "PRIORITY payload is not 5 bytes")
            self._check_dependency(stream_id, payload)
        elif kind == GOAWAY:
            self._control()
            if stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "GOAWAY payload too short")
            self._goaway(NO_ERROR)
        elif kind == PUSH_PROMISE:
            raise H2ConnectionError(PROTOCOL_ERROR, "a client may not push")
        else:
            self._control()  # unknown types are ignored (section 5.5), but not free

    @staticmethod
    def _check_dependency(stream_id: int, priority: bytes) -> None:
        # A stream error in RFC 9113 (5.3.1 of RFC 7540); a connection error
        # here, as in h2: priorities are ignored, and no client sends this.
        if int.from_bytes(priority[:4]) & 0x7FFFFFFF == stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "a stream depends on itself")

    def _control(self) -> None:
        budget = self._budget
        if budget.tokens >= 1.0:
            budget.tokens -= 1.0
        elif not budget.spend(self._clock):
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "control frame flood")

    def _is_idle(self, stream_id: int) -> bool:
        """A stream the client never opened: frames on it other than HEADERS
        and PRIORITY are a connection error (5.1). Even ids are the server's,
        and this server opens none."""
        return stream_id > self._last_stream_id or not stream_id & 1

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        grew = False
        peer = self._peer
        for ident, value in PeerSettings.parse(payload):
            if ident == INITIAL_WINDOW_SIZE:
                if value > peer.initial_window:
                    self._check_stream_windows(value)
                    grew = True
                peer.initial_window = value
            elif ident == MAX_FRAME_SIZE:
                peer.max_frame = value
        self._out.append(frame(SETTINGS, ACK, 0))
        if grew:
            self._pump_blocked()

    def _check_stream_windows(self, initial: int) -> None:
        if initial + self._max_send_delta <= MAX_WINDOW:
            return
        # The bound is stale or true: find out, and keep the exact figure.
        self._max_send_delta = max((s.send_delta for s in self._streams.values()), default=0)
        if initial + self._max_send_delta > MAX_WINDOW:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, "SETTINGS overflow a stream window")

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "malformed WINDOW_UPDATE")
        increment = int.from_bytes(payload) & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE increment 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise H2ConnectionError(FLOW_CONTROL_ERROR, "connection window overflow")
            self._pump_blocked()
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            if self._ended.get(stream_id):
                # After the client's own RST_STREAM, any frame but PRIORITY is a
                # stream error (RFC 9113 5.1); after its END_STREAM, a
                # WINDOW_UPDATE is allowed, and ignored like any on a closed stream.
                self._control()
                self._out.append(rst_stream(stream_id, STREAM_CLOSED))
            return
        if not increment:
            self._reset(stream, PROTOCOL_ERROR)
            return
        stream.send_delta += increment
        if self._peer.initial_window + stream.send_delta > MAX_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        self._max_send_delta = max(self._max_send_delta, stream.send_delta)
        if stream.outbox:
            self._pump(stream)

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
        self._control()
        # How Envoy ends every ext_proc stream once its request is done.
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return
        premature = not stream.headers_sent
        # Closed by the peer: any frame but PRIORITY on it from now on is its
        # error (RFC 9113 5.1), so it is remembered as ended.
        stream.remote_closed = True
        self._close_stream(stream)
        if stream_id in self._ended:
            self._ended[stream_id] = True  # by a reset, not an END_STREAM
        if premature and self._resets.on_premature_reset():
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "streams reset before any answer")

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        if len(payload) > self._limits.max_header_block:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
        if flags & PRIORITY_FLAG:
            self._check_dependency(stream_id, payload[1:] if flags & PADDED else payload)
        if flags & (PADDED | PRIORITY_FLAG):
            payload = unpad(flags, payload, priority=bool(flags & PRIORITY_FLAG))
        self._header_block = bytearray(payload)
        self._header_stream = stream_id
        self._header_end_stream = bool(flags & END_STREAM)
        self._continuations = 0
        if flags & END_HEADERS:
            self._end_headers()

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        block = self._header_block
        if block is None or stream_id != self._header_stream:
            raise H2ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
        if not payload and not flags & END_HEADERS:
            self._control()
        self._continuations += 1
        if self._continuations > self._limits.max_continuations:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        block += payload
        if len(block) > self._limits.max_header_block:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._end_headers()

    def _end_headers(self) -> None:
        assert self._header_block is not None
        block, self._header_block = bytes(self._header_block), None
        stream_id, end_stream = self._header_stream, self._header_end_stream
        try:
            # Every block is decoded, even a stream's trailers: HPACK state is
            # shared by the whole connection.
            headers = self._decoder.decode(block)
        except HeaderListTooLarge as exc:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, str(exc)) from None
        except DecodeError as exc:
            raise H2ConnectionError(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client end its half
            if stream.remote_closed:
                self._reset(stream, STREAM_CLOSED)
            elif not end_stream or malformed_trailers(headers) is not None:
                self._reset(stream, PROTOCOL_ERROR)
            else:
                self._remote_close(stream)
            return
        if not stream_id & 1:
            raise H2ConnectionError(PROTOCOL_ERROR, "even stream id from a client")
        if stream_id <= self._last_stream_id:
            if stream_id in self._ended:
                raise H2ConnectionError(STREAM_CLOSED, "HEADERS on a stream the client closed")
            self._control()  # a stream this connection already finished: ignored
            return
        self._last_stream_id = stream_id
        self._resets.on_open()
        if self._budget.tokens < self._limits.control_burst:
            self._budget.grant(self._limits.control_per_stream)
        if self._goaway_sent or len(self._streams) >= self._limits.max_concurrent_streams:
            # Over the advertised limit, a stream is refused, not the connection
            # (RFC 9113, 5.1.2): the client may retry it once others finish.
            self._out.append(rst_stream(stream_id, REFUSED_STREAM))
            return
        if malformed_request(headers) is not None:  # 8.1.1: a stream error
            self._out.append(rst_stream(stream_id, PROTOCOL_ERROR))
            return
        path = next((v for k, v in headers if k == b":path"), None)
        if path is not None and not path.isascii():
            try:
                path.decode()
            except UnicodeDecodeError:
                path = None
        if path is None:  # a malformed request (8.1.1): a stream error
            self._out.append(rst_stream(stream_id, PROTOCOL_ERROR))
            return
        factory = self._shared.handlers.get(path)
        handler: StreamHandler = _Unimplemented()
        failure: tuple[int, str] | None = None
        if factory is None:
            failure = (StreamStatus.UNIMPLEMENTED, "unknown method")
        else:
            try:
                handler = factory(headers)
            except Exception:
                log.exception("ext_proc stream setup failed")
                failure = (StreamStatus.INTERNAL, "internal error")
        stream = _Stream(stream_id, handler, self._shared.stream_window)
        self._streams[stream_id] = stream
        if failure is not None:
            # Its END_STREAM still counts: DATA after it is an error (5.1).
            stream.remote_closed = end_stream
            self._finish(stream, *failure)
            return
        if end_stream:
            self._remote_close(stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        window = self._recv
        if size > window.available:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        window.available -= size
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise H2ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            if stream_id in self._ended:
                raise H2ConnectionError(STREAM_CLOSED, "DATA on a stream the client closed")
            self._release(None, size)  # reset or finished by us: its data is dropped
            if not size:
                self._control()
            return
        if stream.remote_closed:
            self._release(None, size)
            self._reset(stream, STREAM_CLOSED)
            return
        if size > stream.recv_available:
            self._release(None, size)
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        stream.recv_available -= size
        stream.held += size
        content = payload
        if flags & PADDED:
            content = unpad(flags, payload)
            self._release(stream, size - len(content))
        if not content and not flags & END_STREAM:
            self._control()  # empty DATA floods (CVE-2019-9518)
        if (
            not stream.rx
            and len(content) >= 5
            and not content[0]
            and int.from_bytes(content[1:5]) == len(content) - 5 <= self._shared.max_message_bytes
        ):
            # One frame, one whole message: how Envoy sends each phase.
            self._on_message(stream, content[5:])
            if self._streams.get(stream_id) is not stream:
                return
        elif content:
            stream.rx += content
            messages, failure = split_messages(stream.rx, self._shared.max_message_bytes)
            for message in messages:
                self._on_message(stream, message)
                if self._streams.get(stream_id) is not stream:
                    return
            if failure is not None:
                self._finish(stream, *failure)
                return
        if flags & END_STREAM:
            self._remote_close(stream)

    # -- streams --

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    def _on_message(self, stream: _Stream, message: bytes) -> None:
        if stream.busy:
            # ext_proc never sends the next message before its answer, but
            # gRPC allows it: keep the order. It keeps its place in the window.
            stream.inbox.append(message)
            return
        self._release(stream, 5 + len(message))
        self._progress += 1
        stream.busy = True
        task = start_task(self._loop, self._answer(stream, message))
        if task is not None and not task.done():
            stream.task = task
            self._tasks[task] = None
            task.add_done_callback(self._task_done)

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
        stream.task = None
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
            self._out.append(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
        outbox = stream.outbox
        outbox += len(message).to_bytes(5)  # flag byte 0: not compressed
        outbox += message
        self._pump(stream)
        if self._reading:
            self._out_bytes += len(message)
            if self._out_bytes >= self._limits.write_high_water:
                self._flush()

    def _finish(self, stream: _Stream, status: int, message: str = "") -> None:
        """End the stream with trailers once its data has gone out."""
        if status != StreamStatus.OK:
            stream.inbox.clear()  # their bytes go back to the window as the stream closes
            log.debug("stream %d ends with gRPC status %d: %s", stream.id, status, message)
        if not stream.headers_sent and not stream.outbox:
            # Trailers-only response: one HEADERS frame carries status and trailers.
            stream.headers_sent = True
            stream.trailers = RESPONSE_HEADERS + trailers(status, message)
        else:
            stream.trailers = trailers(status, message)
        self._pump(stream)

    def _pump_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            self._pump(stream)
            if self._send_window <= 0:
                return

    def _pump(self, stream: _Stream) -> None:
        """Send what flow control allows of the stream's data, then its trailers."""
        outbox = stream.outbox
        sent = 0
        with memoryview(outbox) as view:
            # Frames are cut from a view: a large answer is copied once, into its frames.
            while sent < len(view):
                room = min(
                    self._peer.initial_window + stream.send_delta,
                    self._send_window,
                    self._peer.max_frame,
                )
                if room <= 0:
                    break
                with view[sent : sent + room] as chunk:
                    size = len(chunk)
                    self._out.append(frame(DATA, 0, stream.id, chunk))
                sent += size
                stream.send_delta -= size
                self._send_window -= size
        del outbox[:sent]
        if outbox:
            self._blocked[stream.id] = stream
            return
        self._blocked.pop(stream.id, None)
        if stream.trailers is not None:
            self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, stream.trailers))
            stream.trailers = None
            if not stream.remote_closed:
                # Our half is closed; the client's RST_STREAM or END_STREAM
                # (ignored from now on) follows.
                self._out.append(rst_stream(stream.id, NO_ERROR))
            self._close_stream(stream)

    def _reset(self, stream: _Stream, code: int) -> None:
        self._out.append(rst_stream(stream.id, code))
        self._close_stream(stream)

    def _close_stream(self, stream: _Stream) -> None:
        if self._streams.pop(stream.id, None) is None:
            return
        if stream.remote_closed:
            # More DATA or HEADERS on it is a connection error (5.1, "closed"):
            # remembered for the most recent streams only.
            self._ended[stream.id] = False
            if len(self._ended) > _ENDED_REMEMBERED:
                del self._ended[next(iter(self._ended))]
        self._blocked.pop(stream.id, None)
        if stream.busy and stream.task is not None:
            stream.task.cancel()  # the peer is gone: stop working for it
        if stream.held:
            self._release(None, stream.held)
            stream.held = 0
        if not self._streams:
            self._notify_idle()

    def _release(self, stream: _Stream | None, size: int) -> None:
        """Give ``size`` bytes back to the windows they were received in,
        announced once half a window is owed (see ``ReceiveWindow.release``)."""
        if stream is not None:
            stream.held -= size
            stream.recv_pending += size
            if stream.recv_pending * 2 >= self._shared.stream_window and not stream.remote_closed:
                increment, stream.recv_pending = stream.recv_pending, 0
                stream.recv_available += increment
                self._out.append(window_update(stream.id, increment))
        window = self._recv
        window.pending += size
        if window.pending * 2 >= window.size:
            self._out.append(window_update(0, window.release(0)))

    # -- output --

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._out_bytes = 0
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _goaway(self, code: int) -> None:
        if not self._goaway_sent:
            self._goaway_sent = True
            self._out.append(goaway(self._last_stream_id, code))

    def _fail(self, code: int, reason: str) -> None:
        _closing_log.warning("closing ext_proc connection: %s", reason)
        # A second GOAWAY is allowed (6.8): the error follows a graceful one.
        self._goaway_sent = True
        self._out.append(goaway(self._last_stream_id, code))
        self._flush()
        self.abort()

    def shutdown(self) -> None:
        """Refuse new streams; the ones in flight finish."""
        self._goaway(NO_ERROR)
        self._flush()

    def abort(self) -> None:
        # Off the roll at once: the connection cap counts what is still open.
        self._shared.connections.pop(self, None)
        if self._transport is not None:
            self._transport.close()
