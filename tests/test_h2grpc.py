"""The HTTP/2 gRPC transport, driven by grpcio's own client (a second, independent
HTTP/2 and HPACK implementation next to Envoy's, which the e2e tests use)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest

from ext_proc.transport import GrpcError, H2GrpcServer, StreamStatus

PATH = "/test.Echo/Chat"
LIMIT = 1024 * 1024


class _Echo:
    """Answers each message with its upper-cased bytes; ``fail`` and ``slow`` are verbs."""

    async def handle(self, message: bytes) -> bytes:
        if message == b"fail":
            raise GrpcError(StreamStatus.INVALID_ARGUMENT, "told to fail: 100%")
        if message == b"crash":
            raise RuntimeError("boom")
        if message.startswith(b"slow"):
            await asyncio.sleep(0.05)
        return message.upper()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = H2GrpcServer({PATH: lambda headers: _Echo()}, max_message_bytes=LIMIT)
    bound = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)
    try:
        yield bound
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0.5), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _chat(port: int, messages: list[bytes], path: str = PATH) -> list[bytes]:
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 8 * LIMIT)]
    ) as channel:
        call = channel.stream_stream(path)
        return list(call(iter(messages), timeout=10))


def test_each_message_gets_its_answer_in_order(port: int) -> None:
    assert _chat(port, [b"slow one", b"two", b"three"]) == [b"SLOW ONE", b"TWO", b"THREE"]


def test_many_streams_on_one_connection(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(PATH)
        for i in range(50):
            assert list(call(iter([b"m%d" % i]), timeout=10)) == [b"M%d" % i]


def test_an_empty_stream_ends_ok(port: int) -> None:
    assert _chat(port, []) == []


def test_messages_larger_than_frames_and_windows(port: int) -> None:
    # Bigger than HTTP/2's 16 KiB frames and 64 KiB default windows, both ways.
    big = b"a" * (LIMIT - 10)
    assert _chat(port, [big, big]) == [big.upper(), big.upper()]


def test_a_message_over_the_limit_is_resource_exhausted(port: int) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _chat(port, [b"a" * (LIMIT + 1)])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_handler_errors_become_grpc_statuses(port: int) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _chat(port, [b"ok", b"fail"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "told to fail: 100%"
    with pytest.raises(grpc.RpcError) as info:
        _chat(port, [b"crash"])
    assert info.value.code() == grpc.StatusCode.INTERNAL
    # The connection and the server survive both.
    assert _chat(port, [b"after"]) == [b"AFTER"]


def test_unknown_method_is_unimplemented(port: int) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _chat(port, [b"x"], path="/test.Echo/Other")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_cancelled_stream_leaves_the_server_serving(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(PATH)(iter([b"slow", b"slow"]), timeout=10)
        call.cancel()
        assert list(channel.stream_stream(PATH)(iter([b"z"]), timeout=10)) == [b"Z"]


def test_not_http2_is_dropped(port: int) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    # SETTINGS, WINDOW_UPDATE, then GOAWAY(PROTOCOL_ERROR) before the close.
    assert data and b"\x07" in data[:200]


def test_stop_refuses_new_streams_and_finishes(tmp_path: object) -> None:
    async def run() -> None:
        server = H2GrpcServer({PATH: lambda headers: _Echo()}, max_message_bytes=LIMIT)
        bound = await server.start("127.0.0.1", 0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bound}") as channel:
            call = channel.stream_stream(PATH)
            assert [m async for m in call(iter([b"hi"]))] == [b"HI"]
            await server.stop(1.0)
            with pytest.raises(grpc.RpcError):
                _ = [m async for m in call(iter([b"again"]), timeout=2)]

    asyncio.run(run())


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each whole frame in ``data``."""
    frames, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i : i + 3])
        kind, flags, stream = data[i + 3], data[i + 4], int.from_bytes(data[i + 5 : i + 9])
        frames.append((kind, flags, stream & 0x7FFFFFFF, data[i + 9 : i + 9 + length]))
        i += 9 + length
    return frames


def test_streams_over_the_advertised_limit_are_refused() -> None:
    import socket

    from hpack import Encoder

    async def run() -> bytes:
        server = H2GrpcServer(
            {PATH: lambda headers: _Echo()}, max_message_bytes=LIMIT, max_concurrent_streams=2
        )
        bound = await server.start("127.0.0.1", 0)
        headers = [(":method", "POST"), (":scheme", "http"), (":path", PATH)]
        headers += [(":authority", "x"), ("content-type", "application/grpc")]
        encoder = Encoder()
        request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
        for stream_id in (1, 3, 5):  # three open streams, no END_STREAM: a client ignoring the cap
            block = encoder.encode(headers)
            request += len(block).to_bytes(3) + b"\x01\x04" + stream_id.to_bytes(4) + block

        def exchange() -> bytes:
            with socket.create_connection(("127.0.0.1", bound), timeout=5) as s:
                s.sendall(request)
                data = b""
                for _ in range(50):
                    if any(f[0] == 0x3 for f in _frames(data)):
                        break
                    data += s.recv(65536)
                return data

        try:
            return await asyncio.to_thread(exchange)
        finally:
            await server.stop(0)

    frames = _frames(asyncio.run(run()))
    settings = next(payload for kind, flags, _, payload in frames if kind == 0x4 and not flags)
    advertised = {
        int.from_bytes(settings[i : i + 2]): int.from_bytes(settings[i + 2 : i + 6])
        for i in range(0, len(settings), 6)
    }
    assert advertised[0x3] == 2  # SETTINGS_MAX_CONCURRENT_STREAMS
    resets = [(stream, payload) for kind, _, stream, payload in frames if kind == 0x3]
    assert resets == [(5, (0x7).to_bytes(4))]  # REFUSED_STREAM, for the third only


def test_a_stream_task_starts_at_once_and_keeps_one_context() -> None:
    import contextvars

    from ext_proc.transport.tasks import start_task as _start_task

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def inline() -> None:
        seen.append("inline")

    async def waits(gate: asyncio.Future[str]) -> None:
        token = var.set("mine")
        seen.append(await gate)
        seen.append(var.get())
        var.reset(token)  # raises if the steps ran in different contexts

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = _start_task(loop, inline())
        assert seen == ["inline"] and (task is None or task.done())
        gate: asyncio.Future[str] = loop.create_future()
        task = _start_task(loop, waits(gate))
        assert task is not None and not task.done() and var.get() == "unset"
        gate.set_result("opened")
        await task
        assert seen == ["inline", "opened", "mine"]
        # Cancelled while waiting: the coroutine sees the cancellation.
        never: asyncio.Future[str] = loop.create_future()
        task = _start_task(loop, waits(never))
        assert task is not None
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert never.cancelled()

    asyncio.run(run())


def test_header_decoder_agrees_with_hpack() -> None:
    from hpack import Encoder

    from ext_proc.transport.hpack import HeaderDecoder, HuffmanMemo

    encoder, decoder = Encoder(), HeaderDecoder(HuffmanMemo())
    blocks = [
        [(b":method", b"POST"), (b":path", b"/a.B/C"), (b"x-request-id", b"1" * 36)],
        [(b":method", b"POST"), (b":path", b"/a.B/C"), (b"x-request-id", b"2" * 36)],
        [(b"x-long", b"v" * 300), (b"x-\xc3\xa9", b"\xc3\xa9t\xc3\xa9")],
        [(b"x-secret", b"never")],
    ]
    for i, headers in enumerate(blocks * 20):
        # Huffman or not, indexed or not, and evictions once the table fills.
        data = encoder.encode(headers, huffman=bool(i % 2))
        assert decoder.decode(data) == headers
    encoder.header_table_size = 256  # emits a table size update
    assert decoder.decode(encoder.encode(blocks[0])) == blocks[0]


def test_header_decoder_rejects_broken_blocks() -> None:
    from ext_proc.transport.hpack import DecodeError, HeaderDecoder, HuffmanMemo

    for block in (b"\x80", b"\xff\xff\xff\xff\xff\xff\x7f", b"\x04\x85ab", b"\xbe"):
        with pytest.raises(DecodeError):
            HeaderDecoder(HuffmanMemo()).decode(block)


@pytest.mark.parametrize("transport", ["h2", "grpcio"])
def test_new_streams_take_the_servicers_current_table(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hook a config reload needs: swap the table, and the next stream uses it.
    from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
    from envoy.service.ext_proc.v3.external_processor_pb2 import (
        HttpHeaders,
        ProcessingRequest,
        ProcessingResponse,
    )

    from ext_proc.routing.resolve import build_routing_table
    from ext_proc.server.service import GRPC_SERVER_ENV, PROCESS_PATH, start_server
    from tests.factories import config, provider

    monkeypatch.setenv(GRPC_SERVER_ENV, transport)
    headers = HeaderMap(
        headers=[
            HeaderValue(key=":method", raw_value=b"GET"),
            HeaderValue(key=":path", raw_value=b"/v1/models"),
        ]
    )
    request = ProcessingRequest(request_headers=HttpHeaders(headers=headers, end_of_stream=True))

    async def run() -> None:
        running = await start_server(config(provider("openai/gpt-5")), "127.0.0.1", 0)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                call = channel.stream_stream(
                    PROCESS_PATH,
                    request_serializer=ProcessingRequest.SerializeToString,
                    response_deserializer=ProcessingResponse.FromString,
                )
                (first,) = [r async for r in call(iter([request]), timeout=5)]
                new = config(provider("anthropic/claude-sonnet-4-5"))
                running.servicer.table = build_routing_table(new)
                (second,) = [r async for r in call(iter([request]), timeout=5)]
        finally:
            await running.stop(0.5)
        assert b"openai/gpt-5" in first.immediate_response.body
        assert b"anthropic/claude-sonnet-4-5" in second.immediate_response.body

    asyncio.run(run())
