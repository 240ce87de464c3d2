"""The HTTP/2 transport's own cost per ext_proc stream, over TCP loopback and a
Unix domain socket (and TLS), measured as the server process's CPU time.

    PYTHONPATH=. python bench/transport_bench.py [--streams 20000] [--inflight 16]
        [--repeat 3] [--transports tcp,uds,tls]

A child process serves one gRPC method whose handler answers every message
with the same 120 bytes, so only the transport works. A raw HTTP/2 client (no
library: its cost is not the server's) runs ext_proc-shaped streams, as Envoy
does: HEADERS, one message (request headers), its answer, a second message
(response headers), its answer, then RST_STREAM; ``--inflight`` streams at a
time on one connection. Prints, per transport, the server's CPU microseconds
per stream (the figure to compare) and the wall-clock streams per second,
best of ``--repeat`` runs (the least disturbed by other load on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATH = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
_ANSWER = b"\x0a\x76" + b"r" * 118
_REQUEST = b"\x12\x80\x02" + b"h" * 256  # about what a request-headers message weighs


# --- server (child process) ---------------------------------------------------


class _Fixed:
    async def handle(self, message: bytes) -> bytes:
        return _ANSWER


async def _serve(kind: str, where: str, cert_dir: str | None) -> None:
    try:
        from ext_proc.transport import H2GrpcServer
    except ImportError:  # the transport before it became a package of its own
        from ext_proc.transport.h2grpc import H2GrpcServer  # type: ignore[no-redef]
    server = H2GrpcServer({PATH: lambda headers: _Fixed()}, max_message_bytes=9 << 20)
    if kind == "uds":
        await server.start_unix(where)
        address = where
    else:
        tls = None
        if kind == "tls":
            from ext_proc.transport import tls_context

            assert cert_dir is not None
            tls = tls_context(Path(cert_dir, "cert.pem"), Path(cert_dir, "key.pem"))
        port = await server.start("127.0.0.1", 0, **({"tls": tls} if tls else {}))
        address = str(port)
    print(f"ready {address}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


# --- client --------------------------------------------------------------------


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3) + bytes((kind, flags)) + stream_id.to_bytes(4) + payload


def _client(sock: socket.socket | ssl.SSLSocket, streams: int, inflight: int) -> None:
    from hpack import Encoder

    encoder = Encoder()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", PATH),
        (":authority", "ext_proc"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-envoy-internal", "true"),
    ]
    message = len(_REQUEST).to_bytes(5) + _REQUEST
    settings = (0x4).to_bytes(2) + (2**31 - 1).to_bytes(4)
    sock.sendall(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + _frame(0x4, 0, 0, settings)
        + _frame(0x8, 0, 0, (2**31 - 1 - 65_535).to_bytes(4))
    )
    phase: dict[int, int] = {}  # stream -> answers received
    next_id, started, done = 1, 0, 0
    buf = bytearray()
    out: list[bytes] = []

    def open_stream() -> None:
        nonlocal next_id, started
        block = encoder.encode(headers)
        out.append(_frame(0x1, 0x4, next_id, block) + _frame(0x0, 0, next_id, message))
        phase[next_id] = 0
        next_id += 2
        started += 1

    for _ in range(min(inflight, streams)):
        open_stream()
    while done < streams:
        if out:
            sock.sendall(b"".join(out))
            out.clear()
        chunk = sock.recv(1 << 18)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3])
            if len(buf) - pos - 9 < length:
                break
            kind, stream_id = buf[pos + 3], int.from_bytes(buf[pos + 5 : pos + 9]) & 0x7FFFFFFF
            pos += 9 + length
            if kind == 0x7:
                raise ConnectionError("GOAWAY from the server")
            if kind != 0x0 or stream_id not in phase:
                continue
            phase[stream_id] += 1
            if phase[stream_id] == 1:
                out.append(_frame(0x0, 0, stream_id, message))
            else:
                del phase[stream_id]
                out.append(_frame(0x3, 0, stream_id, (0).to_bytes(4)))
                done += 1
                if started < streams:
                    open_stream()
        del buf[:pos]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _make_cert(directory: str) -> None:
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", f"{directory}/key.pem"),
            *("-out", f"{directory}/cert.pem"),
        ],
        check=True,
        capture_output=True,
    )


def _run(kind: str, streams: int, inflight: int, workdir: str) -> tuple[float, float]:
    where = os.path.join(workdir, "bench.sock")
    child = subprocess.Popen(
        [sys.executable, __file__, "serve", kind, where, workdir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"the {kind} server did not start")
        with _connect(kind, line[1], workdir) as sock:
            _client(sock, 200, inflight)  # warm up: imports, allocator, caches
        with _connect(kind, line[1], workdir) as sock:
            cpu, wall = _cpu_seconds(child.pid), time.perf_counter()
            _client(sock, streams, inflight)
            cpu, wall = _cpu_seconds(child.pid) - cpu, time.perf_counter() - wall
        return cpu / streams * 1e6, streams / wall
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _connect(kind: str, address: str, workdir: str) -> socket.socket:
    if kind == "uds":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
    else:
        sock = socket.create_connection(("127.0.0.1", int(address)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind == "tls":
            context = ssl.create_default_context(cafile=f"{workdir}/cert.pem")
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(sock, server_hostname="localhost")
    sock.settimeout(30)
    return sock


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        asyncio.run(_serve(sys.argv[2], sys.argv[3], sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transports", default="tcp,uds,tls")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        kinds = args.transports.split(",")
        if "tls" in kinds:
            _make_cert(workdir)
        print(
            f"{'transport':<10}{'CPU us/stream':>16}{'streams/s':>12}   ({args.streams} streams,"
            f" {args.inflight} in flight, best of {args.repeat})"
        )
        for kind in kinds:
            runs = [_run(kind, args.streams, args.inflight, workdir) for _ in range(args.repeat)]
            cpu = min(r[0] for r in runs)
            rate = max(r[1] for r in runs)
            print(f"{kind:<10}{cpu:>16.1f}{rate:>12.0f}")


if __name__ == "__main__":
    main()
