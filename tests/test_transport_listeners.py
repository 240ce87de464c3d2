"""Serving on a Unix domain socket and over TLS with ALPN h2, with grpcio as
the client (its own HTTP/2 and TLS stacks)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from ext_proc.transport import H2GrpcServer, tls_context
from tests.processes import read_until
from tests.transport_peer import PATH, Echo


def _call(target: str, credentials: grpc.ChannelCredentials | None = None) -> list[bytes]:
    options = [("grpc.ssl_target_name_override", "localhost")] if credentials else []
    channel = (
        grpc.secure_channel(target, credentials, options=options)
        if credentials
        else grpc.insecure_channel(target)
    )
    with channel:
        return list(channel.stream_stream(PATH)(iter([b"hello"]), timeout=10))


def test_serves_on_a_unix_socket_and_replaces_only_a_stale_one(tmp_path: Path) -> None:
    path = tmp_path / "ext_proc.sock"
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("keep")

    async def run() -> None:
        server = H2GrpcServer({PATH: lambda headers: Echo()}, max_message_bytes=1 << 20)
        await server.start_unix(path)
        try:
            assert await asyncio.to_thread(_call, f"unix:{path}") == [b"HELLO"]
            with pytest.raises(OSError):
                await server.start_unix(not_a_socket)
        finally:
            await server.stop(0)
        assert not path.exists()  # removed on stop
        assert not_a_socket.read_text() == "keep"
        path.touch()  # a regular file is never replaced
        again = H2GrpcServer({PATH: lambda headers: Echo()}, max_message_bytes=1 << 20)
        with pytest.raises(OSError):
            await again.start_unix(path)
        await again.stop(0)

    asyncio.run(run())


def test_serves_tls_with_alpn_h2(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )

    async def run() -> None:
        server = H2GrpcServer({PATH: lambda headers: Echo()}, max_message_bytes=1 << 20)
        port = await server.start("127.0.0.1", 0, tls=tls_context(cert, key))
        try:
            credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
            answer = await asyncio.to_thread(_call, f"127.0.0.1:{port}", credentials)
            assert answer == [b"HELLO"]
            # Cleartext HTTP/2 on the TLS port is refused, and the server goes on.
            with pytest.raises(grpc.RpcError):
                await asyncio.to_thread(_call, f"127.0.0.1:{port}")
            assert await asyncio.to_thread(_call, f"127.0.0.1:{port}", credentials) == [b"HELLO"]
        finally:
            await server.stop(0)

    asyncio.run(run())


def test_archway_serve_listens_on_a_unix_socket(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    config = tmp_path / "c.yaml"
    config.write_text(
        "llm_providers:\n  - model: openai/gpt-5\n    access_key: k\n    default: true\n"
    )
    sock = tmp_path / "s.sock"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "ext_proc.cli", "serve", str(config), "--port", "0"),
            *("--workers", "1", "--drain-seconds", "0", "--metrics-port", "0", "--uds", str(sock)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert f"listening on unix:{sock}" in read_until(proc, "unix:", 60)[-1]
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.terminate()
        proc.wait(10)
    assert not sock.exists()
