"""An OpenAI-shaped upstream that answers every request with one fixed chat completion.

The benchmark measures what sits in front of the upstream, so the upstream must
cost next to nothing: a raw ``asyncio.Protocol`` that finds the end of each
HTTP/1.1 request with two byte searches and writes a prebuilt response. The
threaded echo provider (``ext_proc/deploy/echo.py``) parses JSON and spawns a thread per
connection, and would be the bottleneck.

Run it as its own process, so its CPU never mixes with the harness's:
``python bench/upstream.py --port 18090``. It prints ``listening on HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-5.2",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 512, "completion_tokens": 7, "total_tokens": 519},
    },
    separators=(",", ":"),
).encode()

RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _request_length(buf: bytearray) -> int:
    """Bytes taken by the first complete request in ``buf``; 0 if incomplete, -1 if unusable."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = bytes(buf[:end]).lower()
    start = end + 4
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        line_end = head.find(b"\r\n", at + 2)
        value = head[at + 17 : line_end if line_end >= 0 else len(head)]
        try:
            length = int(value)
        except ValueError:
            return -1
        return start + length if len(buf) >= start + length else 0
    if b"\r\ntransfer-encoding: chunked" in head:
        # The body is discarded, so it is enough to find the last chunk.
        last = buf.find(b"\r\n0\r\n\r\n", start - 2)
        return last + 7 if last >= 0 else 0
    return start


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        transport = self._transport
        assert transport is not None
        while buf:
            taken = _request_length(buf)
            if taken == 0:
                return
            if taken < 0:
                transport.write(_BAD_REQUEST)
                transport.close()
                return
            del buf[:taken]
            transport.write(RESPONSE)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
