"""A small local LLM upstream that answers with what it received.

``archway up --echo-upstream`` starts one for each loopback ``base_url`` in the
config, so a newcomer sees a routed request without any API key; the tests use
it as a fake provider that records every request. It speaks both wire formats:
OpenAI chat completions and Anthropic messages, JSON or SSE when ``stream`` is set.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["EchoUpstream", "ReceivedRequest", "RequestLog", "ThreadedUpstream"]


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _credential_summary(headers: dict[str, str]) -> str:
    """Which credential arrived, never the credential itself."""
    if "authorization" in headers:
        return "authorization: " + headers["authorization"].split(" ", 1)[0] + " ***"
    for name in ("x-api-key", "api-key"):
        if name in headers:
            return f"{name}: ***"
    return "no credentials"


def _reply_text(name: str, req: ReceivedRequest, model: str) -> str:
    return (
        f"echo from {name}: {req.method} {req.path}, model={model}, "
        f"host={req.headers.get('host', '')}, {_credential_summary(req.headers)}"
    )


def _openai_reply(text: str, model: str, stream: bool) -> tuple[str, bytes]:
    words = text.split(" ")
    usage = {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": len(words) + 1}
    if not stream:
        body = {
            "id": "chatcmpl-echo",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        return "application/json", json.dumps(body).encode()
    base = {"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 0, "model": model}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        events.append({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return "text/event-stream", out + b"data: [DONE]\n\n"


def _anthropic_reply(text: str, model: str, stream: bool) -> tuple[str, bytes]:
    usage = {"input_tokens": 1, "output_tokens": len(text.split(" "))}
    message = {
        "id": "msg_echo",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not stream:
        return "application/json", json.dumps(message).encode()
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 0}}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    out = b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)
    return "text/event-stream", out


class _Handler(BaseHTTPRequestHandler):
    server: _EchoHTTPServer
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: with Nagle's algorithm a kept-alive connection's next answer
    # waits for the client's delayed ACK of the previous one (~40 ms on Linux).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the gateway's access log already records every request

    def _read(self) -> ReceivedRequest:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = ReceivedRequest(self.command, self.path, headers, body)
        self.server.upstream.record(req)
        return req

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        # The status line, headers and body leave in one write (one segment for
        # small answers), not a write for the headers and another for the body.
        head = (
            f"{self.protocol_version} {status} {HTTPStatus(status).phrase}\r\n"
            f"server: archway-echo\r\ndate: {self.date_time_string()}\r\n"
            f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.wfile.write(head.encode("latin-1") + body)

    def do_GET(self) -> None:
        self._read()
        self._send(404, "application/json", b'{"error": {"message": "echo: no such path"}}')

    def do_POST(self) -> None:
        req = self._read()
        try:
            payload = req.json()
        except ValueError:
            self._send(400, "application/json", b'{"error": {"message": "echo: invalid JSON"}}')
            return
        model = str(payload.get("model", ""))
        stream = bool(payload.get("stream"))
        text = _reply_text(self.server.upstream.name, req, model)
        path = req.path.split("?", 1)[0]
        if path.endswith("/messages"):
            content_type, body = _anthropic_reply(text, model, stream)
        elif path.endswith("/chat/completions"):
            content_type, body = _openai_reply(text, model, stream)
        else:
            self._send(404, "application/json", b'{"error": {"message": "echo: no such path"}}')
            return
        self._send(200, content_type, body)


class _EchoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    upstream: EchoUpstream


class RequestLog:
    """The requests a provider received, safe to read from a test's thread while
    the server's threads add to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[ReceivedRequest] = []

    def record(self, req: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(req)

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()


class ThreadedUpstream(RequestLog):
    """A provider that ``server`` serves from a thread of its own, recording what
    it receives."""

    def __init__(self, server: ThreadingHTTPServer, name: str, *, thread_name: str) -> None:
        super().__init__()
        self.name = name
        self._httpd = server
        self._thread = threading.Thread(target=server.serve_forever, name=thread_name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EchoUpstream(ThreadedUpstream):
    """An echo provider on ``host:port`` (0 picks a free port), served from a thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str = "echo") -> None:
        server = _EchoHTTPServer((host, port), _Handler)
        server.upstream = self
        super().__init__(server, name, thread_name=f"echo-{name}")
