"""Fake LLM providers that speak each API's real wire format, awkwardly.

``FakeProvider`` answers ``/v1/messages`` the way Anthropic does and
``.../chat/completions`` the way OpenAI does: the same JSON bodies, the same SSE
event sequences (``ping``, tool-argument deltas, OpenAI's usage chunk only when
``stream_options.include_usage`` asks for it). A request that offers tools gets
a call to its first tool; any other request gets ``REPLY_TEXT``.

Bodies leave in small pieces cut at awkward places (inside ``data:``, inside a
multi-byte character, between the two newlines that end an event), with a short
pause after each, so Envoy hands them to the ext_proc server split the same way.
A test can queue a scripted reply (an error, a cut-off stream) or hold a stream
half-sent until it releases a gate.
"""

from __future__ import annotations

import base64
import itertools
import json
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ext_proc.deploy.echo import ReceivedRequest, ThreadedUpstream

__all__ = [
    "ANTHROPIC_MODEL_VERSION",
    "REPLY_TEXT",
    "TOOL_ARGUMENTS",
    "FakeProvider",
    "Reply",
    "anthropic_message",
    "anthropic_stream",
    "openai_completion",
    "openai_stream",
]

REPLY_TEXT = "Bonjour ! Un café ☕, s'il vous plaît."
"""Multi-byte characters, so some cuts land inside one."""

TOOL_ARGUMENTS = {"location": "Paris, France", "unit": "celsius"}
ANTHROPIC_MODEL_VERSION = "-20250929"
"""Anthropic answers with a dated model id; the fake does too."""

PIECE_SIZES = (1, 4, 2, 9, 3, 17, 5, 31, 7)
"""Byte counts the body is cut into, in turn: small and co-prime with everything."""
PAUSE_S = 0.002
GATE_TIMEOUT_S = 10.0


@dataclass
class Reply:
    """A scripted answer; ``None`` fields are filled in as the real provider would."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    hold_after: int | None = None
    """Send this many bytes, then wait for ``gate`` before the rest."""
    gate: threading.Event = field(default_factory=threading.Event)
    resumed: threading.Event = field(default_factory=threading.Event)
    """Set once the rest is being sent: the gate opened, or waiting for it timed out."""


# --- Anthropic wire format ----------------------------------------------------------


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def anthropic_message(model: str, *, tool: str | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]]
    if tool is None:
        content = [{"type": "text", "text": REPLY_TEXT}]
        stop_reason = "end_turn"
    else:
        content = [
            {"type": "text", "text": "Let me check the weather."},
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": tool,
                "input": TOOL_ARGUMENTS,
            },
        ]
        stop_reason = "tool_use"
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model + ANTHROPIC_MODEL_VERSION,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 21,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 4,
            "output_tokens": 13,
            "service_tier": "standard",
        },
    }


def anthropic_stream(model: str, *, tool: str | None = None) -> bytes:
    message = anthropic_message(model, tool=tool)
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {**message["usage"], "output_tokens": 1}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            for word in _words(block["text"]):
                delta = {"type": "text_delta", "text": word}
                events.append(
                    (
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                )
        else:
            begin = {**block, "input": {}}
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": begin},
                )
            )
            arguments = json.dumps(block["input"])
            for piece in ("", arguments[:9], arguments[9:23], arguments[23:]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                events.append(
                    (
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
        for name, data in events
    )


# --- OpenAI wire format -------------------------------------------------------------

_OPENAI_USAGE = {
    "prompt_tokens": 25,
    "completion_tokens": 13,
    "total_tokens": 38,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def openai_completion(model: str, *, tool: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": REPLY_TEXT,
        "refusal": None,
        "annotations": [],
    }
    finish_reason = "stop"
    if tool is not None:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": "call_Dn2RJJSxzDm49vlVTehseJ0k",
                "type": "function",
                "function": {"name": tool, "arguments": json.dumps(TOOL_ARGUMENTS)},
            }
        ]
        finish_reason = "tool_calls"
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": _OPENAI_USAGE,
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }


def openai_stream(model: str, *, tool: str | None = None, include_usage: bool = False) -> bytes:
    base = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice]}

    chunks = []
    if tool is None:
        chunks.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        chunks += [chunk({"content": word}) for word in _words(REPLY_TEXT)]
        chunks.append(chunk({}, "stop"))
    else:
        call = {
            "index": 0,
            "id": "call_Dn2RJJSxzDm49vlVTehseJ0k",
            "type": "function",
            "function": {"name": tool, "arguments": ""},
        }
        chunks.append(
            chunk({"role": "assistant", "content": None, "tool_calls": [call], "refusal": None})
        )
        arguments = json.dumps(TOOL_ARGUMENTS)
        for piece in (arguments[:2], arguments[2:10], arguments[10:27], arguments[27:]):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        chunks.append(chunk({}, "tool_calls"))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _OPENAI_USAGE})
    lines = [f"data: {json.dumps(c, ensure_ascii=False)}\n\n".encode() for c in chunks]
    return b"".join(lines) + b"data: [DONE]\n\n"


# --- the server ---------------------------------------------------------------------


def _first_tool(payload: dict[str, Any]) -> str | None:
    tools = payload.get("tools") or []
    if not tools:
        return None
    first = tools[0]
    return first.get("name") or first.get("function", {}).get("name")


EMBEDDING_DIMENSIONS = 4


def embedding_of(text: str) -> list[float]:
    """A made-up but stable vector for ``text``, exact in float32."""
    return [float(len(text) % 7), 0.5, -0.25, float(len(_words(text)))]


def embeddings_reply(model: str, inputs: object, encoding: object) -> dict[str, Any]:
    """``POST /v1/embeddings`` as OpenAI answers it, floats or base64 float32."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs or [])  # type: ignore[call-overload]
    data = []
    for index, text in enumerate(texts):
        vector = embedding_of(str(text))
        value: object = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = sum(len(_words(str(t))) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def count_tokens_reply(payload: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/messages/count_tokens`` as Anthropic answers it: one token a word."""
    text = json.dumps([payload.get("system"), payload.get("messages")])
    return {"input_tokens": len(_words(text))}


def _native_reply(path: str, payload: dict[str, Any]) -> Reply:
    model = str(payload.get("model", ""))
    tool = _first_tool(payload)
    stream = payload.get("stream") is True
    if path.endswith("/messages/count_tokens"):
        return Reply(body=json.dumps(count_tokens_reply(payload)).encode())
    if path.endswith("/embeddings"):
        reply = embeddings_reply(model, payload.get("input"), payload.get("encoding_format"))
        return Reply(body=json.dumps(reply).encode())
    if path.endswith("/messages"):
        if stream:
            return Reply(
                content_type="text/event-stream; charset=utf-8",
                body=anthropic_stream(model, tool=tool),
            )
        return Reply(body=json.dumps(anthropic_message(model, tool=tool)).encode())
    if stream:
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        body = openai_stream(model, tool=tool, include_usage=include_usage)
        return Reply(content_type="text/event-stream; charset=utf-8", body=body)
    return Reply(body=json.dumps(openai_completion(model, tool=tool)).encode())


def _pieces(body: bytes) -> Iterator[bytes]:
    sizes = itertools.cycle(PIECE_SIZES)
    start = 0
    while start < len(body):
        size = next(sizes)
        yield body[start : start + size]
        start += size


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: each piece must leave when written, as its own segment; with
    # Nagle's algorithm the kernel would hold and merge them until an ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = ReceivedRequest(self.command, self.path, headers, body)
        provider = self.server.provider
        provider.record(request)
        reply = provider.next_reply()
        if reply is None:
            try:
                reply = _native_reply(self.path.split("?", 1)[0], request.json())
            except ValueError:
                reply = Reply(400, body=b'{"error": {"message": "fake: invalid JSON"}}')
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        streaming = reply.content_type.startswith("text/event-stream")
        self.send_response(reply.status)
        self.send_header("content-type", reply.content_type)
        if streaming:
            # As the providers do: no length, chunked, nothing cached.
            self.send_header("transfer-encoding", "chunked")
            self.send_header("cache-control", "no-cache")
        else:
            self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        sent = 0
        hold = reply.hold_after
        for piece in _pieces(reply.body):
            if hold is not None and sent + len(piece) > hold:
                self._write(piece[: hold - sent], streaming)
                reply.gate.wait(GATE_TIMEOUT_S)
                reply.resumed.set()
                self._write(piece[hold - sent :], streaming)
                hold = None
            else:
                self._write(piece, streaming)
            sent += len(piece)
            time.sleep(PAUSE_S)
        if streaming:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _write(self, piece: bytes, chunked: bool) -> None:
        if not piece:
            return
        if chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        else:
            self.wfile.write(piece)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    provider: FakeProvider


class FakeProvider(ThreadedUpstream):
    """A provider on ``127.0.0.1`` (a free port), served from a thread; records requests."""

    def __init__(self, name: str) -> None:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.provider = self
        super().__init__(server, name, thread_name=f"fake-{name}")
        self._replies: list[Reply] = []

    def queue(self, reply: Reply) -> Reply:
        """Answer the next request with ``reply`` instead of the native one."""
        with self._lock:
            self._replies.append(reply)
        return reply

    def next_reply(self) -> Reply | None:
        with self._lock:
            return self._replies.pop(0) if self._replies else None

    def clear(self) -> None:
        super().clear()
        with self._lock:
            self._replies.clear()
