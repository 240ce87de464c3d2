"""Fuzzing the transport's connection with frame sequences built by
``hyperframe``, and python-hyper's ``h2`` as a differential oracle: for the
same bytes, both must agree on whether the client broke the protocol.

The suite runs a short fuzz; for a long one, see docs/transport.md
(``TRANSPORT_FUZZ_EXAMPLES=40000`` is about ten minutes per test on two cores).

Each example is fed to an in-process ``Connection`` over a fake transport,
without sockets: what a peer sends is all that varies, so a failure replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ext_proc.transport.connection import Connection, Shared
from ext_proc.transport.limits import Limits
from tests.transport_peer import PATH, PREFACE, Echo

settings.register_profile(
    "transport-long",
    max_examples=10_000_000,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
FUZZ = settings(
    max_examples=int(os.environ.get("TRANSPORT_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
if os.environ.get("HYPOTHESIS_PROFILE") == "transport-long":
    FUZZ = settings(settings.get_profile("transport-long"), max_examples=10_000_000)


class _Transport:
    """Collects what the connection writes; ``closed`` once it gives up."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


_STATIC_ONLY = b"\x83\x86" + b"\x04" + bytes((len(PATH),)) + PATH.encode() + b"\x01\x01x"
"""POST, http, a literal :path and :authority never added to the table."""

stream_ids = st.sampled_from([0, 1, 1, 1, 3, 3, 5, 2, 2**31 - 1])
small = st.integers(min_value=0, max_value=255)


@st.composite
def frames(draw: st.DrawFn, *, like_h2: bool = False) -> bytes:
    """One frame, valid or not. ``like_h2`` leaves out what h2 (hyperframe)
    refuses and RFC 9113 allows: a padded frame with nothing but padding; and
    streams closed implicitly by a higher one opening (5.1.1), which h2
    remembers and this server, keeping no record of every stream, ignores;
    and frames after the client's GOAWAY, which h2 refuses as a state error."""
    kind = draw(st.integers(0, 10).filter(lambda k: not (like_h2 and k == 8)))
    sid = draw(st.sampled_from([0, 1, 1, 2]) if like_h2 else stream_ids)
    if kind == 0:
        f: Frame = DataFrame(1, data=draw(st.binary(max_size=64)))
        f.flags = draw(st.sets(st.sampled_from(["END_STREAM", "PADDED"])))
        if "PADDED" in f.flags:
            f.pad_length = 0 if like_h2 and not f.data else draw(small)
    elif kind == 1:
        f = HeadersFrame(
            1, data=draw(st.sampled_from([_STATIC_ONLY, b"", b"\x82\x87\x84\x01\x01z"]))
        )
        f.flags = draw(st.sets(st.sampled_from(["END_STREAM", "END_HEADERS", "PADDED"])))
        if "PADDED" in f.flags:
            f.pad_length = 0 if like_h2 and not f.data else draw(small)
    elif kind == 2:
        f = ContinuationFrame(1, data=draw(st.sampled_from([b"", b"\x01\x01y", b"\x82"])))
        f.flags = draw(st.sets(st.sampled_from(["END_HEADERS"])))
    elif kind == 3:
        f = RstStreamFrame(1, error_code=draw(st.integers(0, 13)))
    elif kind == 4:
        f = SettingsFrame(0)
        if draw(st.booleans()):
            f.flags = {"ACK"}
        else:
            for _ in range(draw(st.integers(0, 3))):
                key = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 0x99]))
                f.settings[key] = draw(
                    st.sampled_from([0, 1, 2, 16_383, 16_384, 65_535, 2**24, 2**31 - 1, 2**31])
                )
    elif kind == 5:
        f = PingFrame(0, opaque_data=b"12345678")
        f.flags = draw(st.sets(st.sampled_from(["ACK"])))
    elif kind == 6:
        f = WindowUpdateFrame(0, window_increment=draw(st.sampled_from([0, 1, 65_535, 2**31 - 1])))
    elif kind == 7:
        f = PriorityFrame(1, depends_on=draw(st.sampled_from([0, 1, 3])))
    elif kind == 8:
        f = GoAwayFrame(0, last_stream_id=0, error_code=0)
    elif kind == 9:  # a grpc message on a stream
        body = draw(st.binary(max_size=8))
        f = DataFrame(1, data=len(body).to_bytes(5) + body)
        f.flags = draw(st.sets(st.sampled_from(["END_STREAM"])))
    else:  # raw bytes of a frame header with a bad length for its type
        kind_byte = draw(st.sampled_from([0x3, 0x4, 0x6, 0x8, 0x2]))
        payload = draw(st.binary(max_size=12))
        return len(payload).to_bytes(3) + bytes((kind_byte, 0)) + sid.to_bytes(4) + payload
    f.stream_id = sid  # after construction: hyperframe refuses a wrong one there
    return f.serialize()


def _ours(data: bytes) -> tuple[bool, _Transport, int]:
    """Feeds ``data`` to a connection; True when it closed the connection (only
    a connection error does, here: no timeout runs without a loop turning)."""

    async def run() -> tuple[bool, _Transport, int]:
        shared = Shared({PATH.encode(): lambda headers: Echo()}, 1 << 20, Limits())
        conn = Connection(shared)
        transport = _Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        for start in range(0, len(data), 4096):
            chunk = data[start : start + 4096]
            shared.read_buffer[: len(chunk)] = chunk
            conn.buffer_updated(len(chunk))  # must never raise
            if transport.closed:
                break
        await asyncio.sleep(0)
        conn.connection_lost(None)
        for _ in range(3):  # cancelled handler tasks finish
            await asyncio.sleep(0)
        me = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        return transport.closed, transport, len(left)

    return asyncio.run(run())


_PEER_ERRORS = {0x1, 0x3, 0x5, 0x6}
"""PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR: the
codes that blame the peer."""


def _stream_errors(out: bytes, ignore: frozenset[int] = frozenset()) -> bool:
    pos = 0
    while pos + 9 <= len(out):
        length = int.from_bytes(out[pos : pos + 3])
        stream_id = int.from_bytes(out[pos + 5 : pos + 9]) & 0x7FFFFFFF
        code = int.from_bytes(out[pos + 9 : pos + 13])
        if out[pos + 3] == 0x3 and code in _PEER_ERRORS and stream_id not in ignore:
            return True
        pos += 9 + length
    return False


def _h2_says_protocol_error(head: bytes, sequence: list[bytes]) -> bool:
    """Whether h2 finds a protocol error in ``head`` then ``sequence``, answering
    as this server does: a stream for an unknown method gets trailers-only
    UNIMPLEMENTED at once, then RST_STREAM NO_ERROR if the client has not ended
    it, after which the client's frames on it are ignored, not errors (RFC 9113
    5.1; h2 answers them with RST_STREAM, which is not counted)."""
    reset: set[int] = set()
    known: set[int] = set()
    closed: set[int] = set()
    ended: set[int] = set()
    reopening = 0
    client_reset: set[int] = set()
    block = 0
    config = h2.config.H2Configuration(client_side=False, normalize_inbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20})
    conn.data_to_send()
    try:
        for chunk in (head, *sequence):
            stream_id = int.from_bytes(chunk[5:9]) & 0x7FFFFFFF
            if chunk[3:4] == b"\x03" and stream_id and not stream_id & 1:
                # RFC 9113 6.4: RST_STREAM on an idle stream (a server one here:
                # this server opens none) is a connection error; h2 lets it by.
                return True
            kind, flags = chunk[3], chunk[4]
            if block and (kind != 0x9 or stream_id != block):
                # RFC 9113 6.10: only CONTINUATION on its stream may follow an
                # unfinished header block (before the rules below skip a frame).
                return True
            if kind in (0x1, 0x9):
                block = 0 if flags & 0x4 else stream_id
            if kind in (0x0, 0x1) and stream_id in ended - reset:
                # RFC 9113 5.1: DATA or HEADERS after the peer's END_STREAM is a
                # connection error (STREAM_CLOSED); h2 resets the stream only.
                # A header block is judged once whole (HPACK state must be kept).
                if kind == 0x0 or flags & 0x4:
                    return True
                reopening = stream_id
            elif kind == 0x9 and stream_id == reopening and flags & 0x4:
                return True
            if chunk[:4] == b"\x00\x00\x04\x08" and stream_id in client_reset:
                # RFC 9113 5.1: after the client's RST_STREAM, a WINDOW_UPDATE on
                # the stream is a stream error; h2 lets a non-zero one by.
                return True
            if chunk[:4] == b"\x00\x00\x04\x03" and stream_id in known - ended - reset:
                client_reset.add(stream_id)
            if chunk[:4] == b"\x00\x00\x04\x08" and stream_id in closed | reset:
                # RFC 9113 5.1: WINDOW_UPDATE on a stream closed both ways, or
                # reset by this server, is ignored; h2 takes a zero increment
                # there for an error. One of the wrong length is still a
                # connection error (6.9).
                continue
            if chunk[3:4] == b"\x08" and len(chunk) >= 13:
                # RFC 9113 6.9: the increment's top bit is reserved and ignored on
                # receipt; h2 reads it as part of the increment.
                chunk = chunk[:9] + bytes([chunk[9] & 0x7F]) + chunk[10:]
            events = conn.receive_data(chunk)
            now_ended = {e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)}
            ended |= now_ended
            for event in events:
                if isinstance(event, h2.events.StreamEnded) and event.stream_id in known:
                    # The echo handler's answer to a request that has ended: the
                    # stream is then closed both ways, as it is on this server.
                    with contextlib.suppress(h2.exceptions.StreamClosedError):
                        conn.send_headers(event.stream_id, _OK, end_stream=True)
                        closed.add(event.stream_id)
                if not isinstance(event, h2.events.RequestReceived):
                    continue
                if dict(event.headers or ()).get(b":path") == PATH.encode():
                    known.add(event.stream_id)
                    continue
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    conn.send_headers(event.stream_id, _UNIMPLEMENTED, end_stream=True)
                    if event.stream_id not in now_ended:
                        conn.reset_stream(event.stream_id, 0)
                        reset.add(event.stream_id)
                    else:
                        closed.add(event.stream_id)
    except (h2.exceptions.ProtocolError, h2.exceptions.FrameTooLargeError):
        return True
    return _stream_errors(conn.data_to_send(), frozenset(reset))


_OK = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "0")]
_UNIMPLEMENTED = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "12")]


@FUZZ
@given(st.lists(frames(), max_size=40))
def test_no_frame_sequence_escapes_or_leaks(sequence: list[bytes]) -> None:
    _, transport, tasks_left = _ours(PREFACE + b"".join(sequence))
    assert tasks_left == 0
    # What it wrote parses as whole frames.
    out, pos = bytes(transport.out), 0
    while pos < len(out):
        assert pos + 9 <= len(out)
        pos += 9 + int.from_bytes(out[pos : pos + 3])
    assert pos == len(out)


@FUZZ
@given(st.lists(frames(like_h2=True), max_size=12))
# Found by the ten-minute run: :authority twice, the second in a CONTINUATION.
@example(
    [
        b"\x00\x00\x16\x01\x00\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
        b"\x00\x00\x03\t\x04\x00\x00\x00\x01\x01\x01y",
    ]
)
# And DATA after END_STREAM on a stream answered UNIMPLEMENTED at once.
@example(
    [
        b"\x00\x00\x06\x01\x05\x00\x00\x00\x01\x82\x87\x84\x01\x01z",
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x01",
    ]
)
# And DATA on a stream the client had reset.
@example(
    [
        b"\x00\x00\x16\x01\x04\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
        b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x08",
        b"\x00\x00\x00\x00\x01\x00\x00\x00\x01",
    ]
)
# And HEADERS again on a stream this server had answered UNIMPLEMENTED and reset.
@example(
    [
        b"\x00\x00\x06\x01\x04\x00\x00\x00\x01\x82\x87\x84\x01\x01z",
        b"\x00\x00\x16\x01\x04\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
    ]
)
# And a WINDOW_UPDATE that would overflow a stream already closed both ways:
# ignored, as RFC 9113 5.1 says of WINDOW_UPDATE on a closed stream.
@example(
    [
        b"\x00\x00\x16\x01\x05\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
        b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x7f\xff\xff\xff",
    ]
)
@example(
    [
        b"\x00\x00\x16\x01\x05\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
        b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x00\x00\x00\x00",
    ]
)
@example(
    [
        b"\x00\x00\x16\x01\x05\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
        b"\x00\x00\x04\x03\x00\x00\x00\x00\x02\x00\x00\x00\x00",
    ]
)
# And HEADERS again on a stream the client had ended: a connection error.
@example(
    [
        b"\x00\x00\x16\x01\x05\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
        b"\x00\x00\x16\x01\x00\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
        b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x00\x00\x00\x00",
    ]
)
# And the same HEADERS left unfinished (no END_HEADERS): no error yet.
@example(
    [
        b"\x00\x00\x16\x01\x05\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
        b"\x00\x00\x16\x01\x00\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
    ]
)
# And a zero WINDOW_UPDATE on an ended stream answered UNIMPLEMENTED: ignored.
@example(
    [
        b"\x00\x00\x06\x01\x05\x00\x00\x00\x01\x82\x87\x84\x01\x01z",
        b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x00\x00\x00\x00",
    ]
)
# And an empty WINDOW_UPDATE on a closed stream: FRAME_SIZE_ERROR all the same.
@example(
    [
        b"\x00\x00\x16\x01\x05\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
        b"\x00\x00\x00\x08\x00\x00\x00\x00\x01",
    ]
)
# And a WINDOW_UPDATE after the client's RST_STREAM: a stream error (STREAM_CLOSED).
@example(
    [
        b"\x00\x00\x16\x01\x04\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
        b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x00",
        b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x00\x00\x00\x00",
    ]
)
@example(
    [
        b"\x00\x00\x16\x01\x04\x00\x00\x00\x01\x83\x86\x04\x0f/test.Echo/Chat\x01\x01x",
        b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x00",
        b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x00\x00\x00\x05",
    ]
)
# And a zero WINDOW_UPDATE on a stream this server reset: ignored.
@example(
    [
        b"\x00\x00\x06\x01\x04\x00\x00\x00\x01\x82\x87\x84\x01\x01z",
        b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x00\x00\x00\x00",
    ]
)
# And a connection-level WINDOW_UPDATE with the reserved bit set: ignored.
@example([b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x80\x00\x00\x01"])
def test_h2_agrees_on_what_is_a_connection_error(sequence: list[bytes]) -> None:
    data = PREFACE + SettingsFrame(0).serialize() + b"".join(sequence)
    # Where RFC 9113 makes an error a stream error, h2 sometimes makes it a
    # connection error: what must agree is whether the peer erred at all.
    closed, transport, _ = _ours(data)
    ours = closed or _stream_errors(bytes(transport.out))
    theirs = _h2_says_protocol_error(PREFACE + SettingsFrame(0).serialize(), sequence)
    assert ours == theirs, f"ours={ours} h2={theirs}"
