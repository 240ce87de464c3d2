"""The transport, attacked as a peer on the network would: each attack of
issue 15 as a regression test with the bound it must now meet. Most run
against an in-process server with short timeouts; the memory ones against a
child ``archway serve`` process, measured by its RSS. Bounds are generous
multiples of what the server needs and fractions of what it took before
(docs/transport.md has the figures)."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ext_proc.transport import Limits
from ext_proc.transport.server import SHRINK_AFTER
from tests.processes import read_until
from tests.transport_peer import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    HEADERS,
    NO_ERROR,
    PING,
    PROTOCOL_ERROR,
    REQUEST_HEADERS,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Echo,
    Peer,
    frame,
    grpc_call,
    message,
    serving,
)

FAST = Limits(handshake_timeout_s=0.5, idle_timeout_s=1.0, stall_timeout_s=0.6)


def _wait(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


# --- a child `archway serve`, for memory and descriptor limits ------------------


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def child(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    config = tmp_path / "c.yaml"
    config.write_text(
        "llm_providers:\n  - model: openai/gpt-5\n    access_key: k\n    default: true\n"
    )
    log = tmp_path / "serve.log"

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with log.open("w") as errors:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "ext_proc.cli", "serve", str(config), "--port", "0"),
                *("--workers", "1", "--drain-seconds", "0", "--metrics-port", "0"),
            ],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=few_descriptors,
        )
    try:
        try:
            line = read_until(proc, "listening on", 60)[-1]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstderr: {log.read_text()[-2000:]}") from None
        port = int(line.rsplit(":", 1)[1])
        yield proc, port, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _health_check(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError:
            return False
    return True


def test_idle_and_garbage_connections_cost_little_and_descriptors_run_out_gracefully(
    child: tuple[subprocess.Popen[str], int, Path],
) -> None:
    proc, port, log = child
    assert _health_check(port)
    base = _rss_kb(proc.pid)
    # 200 idle connections: 256 KiB each before (a buffer per connection).
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    time.sleep(0.5)
    grown = _rss_kb(proc.pid) - base
    # 256 KiB each before; a bare socket and a reader now.
    assert grown < 4_000, f"200 idle connections grew RSS by {grown} KiB"
    assert _health_check(port)
    # Garbage on 200 more: each is closed, and its memory is given back.
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(os.urandom(4096))
    assert _health_check(port)
    # Past the 256-descriptor limit: accepts back off (no spinning, a few log
    # lines) and make room by closing idle connections; new clients are served.
    more: list[socket.socket] = []
    for _ in range(150):
        more.append(socket.create_connection(("127.0.0.1", port)))
    cpu = _cpu_s(proc.pid)
    time.sleep(1.5)
    assert _cpu_s(proc.pid) - cpu < 0.6, "the accept loop spins when out of descriptors"
    assert _health_check(port)
    for s in idle + more:
        s.close()
    assert _rss_kb(proc.pid) - base < 20_000
    assert log.read_text().count("\n") < 40, log.read_text()[-3000:]


# --- in-process server ---------------------------------------------------------


def test_a_connection_without_a_preface_or_streams_times_out() -> None:
    with serving(FAST) as running:
        silent = socket.create_connection(("127.0.0.1", running.port), timeout=5)
        with Peer(running.port) as idle:
            for _ in range(10):  # SETTINGS, then the close after the handshake timeout
                if not silent.recv(1000):
                    break
            else:
                raise AssertionError("a connection without a preface stayed open")
            assert idle.goaway(timeout=5) == NO_ERROR and idle.eof
        silent.close()
        assert _wait(lambda: running.connections() == 0)


def test_past_the_connection_cap_idle_ones_make_room() -> None:
    with serving(Limits(max_connections=20)) as running:
        idle = [Peer(running.port) for _ in range(40)]
        assert grpc_call(running.port) == [b"PING"]
        assert running.connections() <= 20
        for peer in idle:
            peer.close()


def test_memory_is_handed_back_once_many_connections_closed() -> None:
    shrunk = threading.Event()
    with serving(on_shrink=shrunk.set) as running:
        few = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(10)]
        assert _wait(lambda: running.connections() == 10)
        for s in few:
            s.close()
        assert _wait(lambda: running.connections() == 0)
        time.sleep(1.5)  # a sweep or more: too few closed to be worth a trim
        assert not shrunk.is_set()
        many = [
            socket.create_connection(("127.0.0.1", running.port)) for _ in range(2 * SHRINK_AFTER)
        ]
        assert _wait(lambda: running.connections() == len(many))
        for s in many:
            s.close()
        assert _wait(shrunk.is_set)


def test_a_silent_peer_costs_a_bare_socket_until_its_first_byte() -> None:
    with serving() as running:
        silent = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(5)]
        assert _wait(lambda: running.connections() == 5)

        async def made() -> int:
            return len(running.server._shared.connections)

        assert running.call(made()) == 0  # no transport, no Connection yet
        silent[0].close()  # gone without a byte: never made one
        assert _wait(lambda: running.connections() == 4)
        assert running.call(made()) == 0
        with Peer(running.port) as peer:  # a byte arrives: a connection as ever
            peer.send(peer.headers(1))
            assert _wait(lambda: running.call(made()) == 1)
        assert grpc_call(running.port) == [b"PING"]
        for s in silent[1:]:
            s.close()


def test_zero_and_overflowing_window_updates_are_protocol_errors() -> None:
    with serving() as running:
        with Peer(running.port) as peer:
            peer.send(peer.headers(1) + frame(WINDOW_UPDATE, 0, 1, (0).to_bytes(4)))
            peer.read(until=lambda fs: any(f[0] == RST_STREAM for f in fs))
            assert peer.resets() == {1: PROTOCOL_ERROR}
            peer.send(peer.headers(3) + frame(WINDOW_UPDATE, 0, 3, (2**31 - 1).to_bytes(4)))
            peer.read(until=lambda fs: 3 in peer.resets())
            assert peer.resets()[3] == FLOW_CONTROL_ERROR
            peer.send(frame(WINDOW_UPDATE, 0, 0, (0).to_bytes(4)))
            assert peer.goaway() == PROTOCOL_ERROR
        with Peer(running.port) as peer:
            peer.send(frame(WINDOW_UPDATE, 0, 0, (2**31 - 1).to_bytes(4)))
            assert peer.goaway() == FLOW_CONTROL_ERROR


def test_control_frame_floods_with_many_open_streams_are_cut_off_cheaply() -> None:
    with serving() as running:
        for flood in (
            frame(WINDOW_UPDATE, 0, 0, (1).to_bytes(4)),
            frame(SETTINGS, 0, 0, (4).to_bytes(2) + (70_000).to_bytes(4)),
            frame(PING, 0, 0, b"12345678"),
            frame(RST_STREAM, 0, 1, (0).to_bytes(4)),
            frame(0x2, 0, 1, bytes(5)),  # PRIORITY
            frame(0xFA, 0, 0, b"x"),  # an unknown type
        ):
            with Peer(running.port) as peer:
                opened = b"".join(peer.headers(2 * i + 1) for i in range(1000))
                peer.send(opened)
                started = time.process_time()
                # 8 MB of the frame before: 53 s of CPU when each walked every stream.
                sent = 0
                while sent < 8 << 20 and peer.send(flood * 2000):
                    sent += len(flood) * 2000
                code = peer.goaway()
                spent = time.process_time() - started
                assert code == ENHANCE_YOUR_CALM, flood[:9]
                assert spent < 5.0, f"{spent:.1f}s of CPU for a control-frame flood"
        assert grpc_call(running.port) == [b"PING"]


def test_an_unknown_method_is_never_echoed() -> None:
    with serving() as running, Peer(running.port) as peer:
        long_path = "/" + "p" * 4000
        headers = [*REQUEST_HEADERS[:2], (":path", long_path), *REQUEST_HEADERS[3:]]
        for i in range(50):  # the path stays in HPACK's table: each HEADERS is a few bytes
            peer.send(peer.headers(2 * i + 1, headers, END_HEADERS | END_STREAM))
        peer.read(until=lambda fs: sum(f[0] == HEADERS for f in fs) >= 50)
        replies = [p for k, _, _, p in peer.frames if k == HEADERS]
        assert len(replies) == 50
        assert max(len(p) for p in replies) < 300
        assert all(b"pppp" not in p for p in replies)


def _huffman_literal(name: bytes, size: int, tag: int) -> bytes:
    """A never-indexed literal whose value is ``size`` bytes of Huffman code,
    made directly (hpack's encoder is quadratic in the value's length): '0' is
    the 5-bit code 00000, '1' 00001, so eight digits fill five bytes."""
    digits = "".join("01"[(tag >> b) & 1] for b in range(8))
    tail = int("".join("00000" if d == "0" else "00001" for d in digits), 2).to_bytes(5)
    raw = bytes(size - size % 5 - 5) + tail
    return b"\x10" + _int7(len(name), 0) + name + _int7(len(raw), 0x80) + raw


def _int7(value: int, flag: int) -> bytes:
    if value < 127:
        return bytes((flag | value,))
    out, value = bytearray((flag | 127,)), value - 127
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(out) + bytes((value,))


def test_huffman_memo_and_header_blocks_are_bounded() -> None:
    from hpack import Encoder

    with serving() as running:
        with Peer(running.port) as peer:
            # Distinct long Huffman-coded values: decoded each time, never remembered.
            for i in range(20):
                block = Encoder().encode(REQUEST_HEADERS) + _huffman_literal(b"x-big", 30_000, i)
                peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, block))
            peer.read(until=lambda fs: sum(f[0] == HEADERS for f in fs) >= 20, timeout=20)
            assert sum(f[0] == HEADERS for f in peer.frames) == 20
            memo = running.server._shared.huffman._entries
            assert sum(len(k) + len(v) for k, v in memo.items()) < 1 << 20
        with Peer(running.port) as peer:
            big = Encoder().encode([*REQUEST_HEADERS, ("x-big", "v" * 1_000_000)], huffman=False)
            peer.send(frame(HEADERS, END_HEADERS, 1, big))  # under the frame size limit
            assert peer.goaway() == ENHANCE_YOUR_CALM
        with Peer(running.port) as peer:
            # An indexed field naming a 4 KiB table entry, repeated 60,000 times.
            encoder = Encoder()
            first = encoder.encode([*REQUEST_HEADERS, ("x-fat", "f" * 4000)], huffman=False)
            peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, first))
            index = bytes((0x80 | 62,))  # the newest dynamic entry: x-fat
            peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, first[:0] + index * 60_000))
            assert peer.goaway() == ENHANCE_YOUR_CALM
        assert grpc_call(running.port) == [b"PING"]


def test_a_ping_flood_from_a_peer_that_does_not_read_is_bounded() -> None:
    with serving() as running, Peer(running.port) as peer:
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sent = 0
        while sent < 8 << 20 and peer.send(frame(PING, 0, 0, b"12345678") * 4096):
            sent += 17 * 4096
        assert peer.goaway(timeout=10) == ENHANCE_YOUR_CALM
        acks = sum(1 for k, flags, _, _ in peer.frames if k == PING and flags & 1)
        assert acks <= 1200


def test_output_a_peer_does_not_read_pauses_reading_and_times_out() -> None:
    limits = Limits(stall_timeout_s=1.0, write_high_water=1 << 16)
    with serving(limits, max_message_bytes=4 << 20) as running, Peer(running.port) as peer:
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.send(frame(0x4, 0, 0, (4).to_bytes(2) + (2**31 - 1).to_bytes(4)))
        peer.send(frame(WINDOW_UPDATE, 0, 0, (2**31 - 1 - 65_535).to_bytes(4)))
        for i in range(20):
            body = message(b"big:%d" % (2 << 20))
            peer.send(peer.headers(2 * i + 1) + frame(DATA, 0, 2 * i + 1, body))

        async def queued() -> int:
            conns = list(running.server._shared.connections)
            return sum(c._transport.get_write_buffer_size() for c in conns if c._transport)

        time.sleep(0.5)
        # A few answers at most: reading stopped once output passed the mark.
        assert running.call(queued()) < 12 << 20  # type: ignore[operator]
        assert _wait(lambda: running.connections() == 0, timeout=10)


def test_empty_continuation_and_data_floods_are_closed() -> None:
    with serving() as running:
        with Peer(running.port) as peer:
            peer.send(peer.headers(1, flags=0))  # no END_HEADERS
            while peer.send(frame(CONTINUATION, 0, 1) * 4096):
                if peer.read(timeout=0.01) and peer.eof:
                    break
            assert peer.goaway() == ENHANCE_YOUR_CALM
        with Peer(running.port) as peer:
            peer.send(peer.headers(1))
            for _ in range(200):
                if not peer.send(frame(DATA, 0, 1) * 4096):
                    break
            assert peer.goaway() == ENHANCE_YOUR_CALM


def test_a_path_that_is_not_utf8_resets_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    from hpack import Encoder

    with serving() as running, Peer(running.port) as peer:
        block = Encoder().encode(
            [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/\xff\xfe")]
        )
        peer.send(frame(HEADERS, END_HEADERS, 1, block))
        peer.send(peer.headers(3) + frame(DATA, END_STREAM, 3, message(b"ok")))
        peer.read(until=lambda fs: peer.messages(3))
        assert peer.resets().get(1) == PROTOCOL_ERROR
        assert peer.messages(3) == message(b"OK")
    assert not [r for r in caplog.records if r.exc_info]


def test_unfinished_messages_are_bounded_by_windows_and_time_out() -> None:
    limits = Limits(stall_timeout_s=0.6)
    with serving(limits, max_message_bytes=9 << 20) as running:
        window = running.server._shared.connection_window
        with Peer(running.port) as peer:
            # Flow control obeyed: 4 streams of 8 MB messages, 7.5 MB sent of each.
            for i in range(4):
                sid = 2 * i + 1
                peer.send(peer.headers(sid))
                head = (8 << 20).to_bytes(5)
                chunk = head + b"m" * ((1 << 20) - 5)
                peer.send(frame(DATA, 0, sid, chunk))
                for _ in range(6):
                    peer.send(frame(DATA, 0, sid, b"m" * (1 << 20)))
                peer.send(frame(DATA, 0, sid, b"m" * (1 << 19)))

            async def held() -> int:
                return sum(c._recv.held for c in running.server._shared.connections)

            assert running.call(held()) <= window  # type: ignore[operator]
            # No progress: closed, and everything it held given back.
            assert peer.goaway(timeout=10) == NO_ERROR
            assert _wait(lambda: running.connections() == 0)
        with Peer(running.port) as peer:
            # Flow control ignored: 20 streams of 8 MB, past the connection window.
            for i in range(20):
                sid = 2 * i + 1
                if not peer.send(peer.headers(sid)):
                    break
                head = (8 << 20).to_bytes(5)
                if not peer.send(frame(DATA, 0, sid, head + b"m" * ((1 << 20) - 5))):
                    break
                for _ in range(7):
                    if not peer.send(frame(DATA, 0, sid, b"m" * (1 << 20))):
                        break
            assert peer.goaway(timeout=10) == FLOW_CONTROL_ERROR
        assert grpc_call(running.port) == [b"PING"]


def test_rapid_reset_is_cut_off() -> None:
    with serving() as running, Peer(running.port) as peer:
        burst = b"".join(
            peer.headers(2 * i + 1) + frame(RST_STREAM, 0, 2 * i + 1, (8).to_bytes(4))
            for i in range(500)
        )
        peer.send(burst)
        assert peer.goaway() == ENHANCE_YOUR_CALM


def test_a_reset_cancels_the_streams_handler() -> None:
    Echo.cancelled.clear()
    with serving() as running, Peer(running.port) as peer:
        peer.send(peer.headers(1) + frame(DATA, 0, 1, message(b"wait")))
        time.sleep(0.2)
        peer.send(frame(RST_STREAM, 0, 1, (8).to_bytes(4)))
        assert _wait(lambda: Echo.cancelled == [1])
        peer.send(peer.headers(3) + frame(DATA, END_STREAM, 3, message(b"after")))
        peer.read(until=lambda fs: peer.messages(3))
        assert peer.messages(3) == message(b"AFTER")


def test_frames_on_streams_never_opened_are_connection_errors() -> None:
    with serving() as running:
        for bad in (
            frame(DATA, 0, 5, b"x"),
            frame(RST_STREAM, 0, 7, (0).to_bytes(4)),
            frame(WINDOW_UPDATE, 0, 9, (1).to_bytes(4)),
            frame(HEADERS, END_HEADERS, 2, b"\x83"),  # an even id
        ):
            with Peer(running.port) as peer:
                peer.send(bad)
                assert peer.goaway() == PROTOCOL_ERROR, bad[:9]


def test_garbage_leaves_no_traceback_and_no_goaway_storm(caplog: pytest.LogCaptureFixture) -> None:
    with serving() as running:
        for i in range(300):
            with socket.create_connection(("127.0.0.1", running.port), timeout=5) as s:
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(64 + i))
                s.shutdown(socket.SHUT_WR)  # what is left of a frame never comes
                with contextlib.suppress(ConnectionResetError):
                    while s.recv(65536):
                        pass
        assert grpc_call(running.port) == [b"PING"]
    assert not [r for r in caplog.records if r.exc_info]
    closing = [r for r in caplog.records if "closing" in r.getMessage()]
    assert len(closing) <= 25  # rate limited: at most 20 a minute, then a summary
