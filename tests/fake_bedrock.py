"""A fake Amazon Bedrock runtime that speaks Converse's real wire format.

``FakeBedrock`` answers ``POST /model/{modelId}/converse`` with Converse JSON and
``.../converse-stream`` with AWS event-stream frames (CRCs included), sent
chunked in small pieces cut across frame boundaries, as Bedrock's own events
carry a ``p`` padding field. A request whose ``toolConfig`` offers tools gets a
call to the first; one that turns on thinking gets a reasoning block first; any
other gets ``REPLY_TEXT``. A test can queue a scripted reply: an error with its
``x-amzn-ErrorType`` header, or a stream that fails with an exception event.

``TranslatingProxy`` stands where Archway will: it takes OpenAI and Anthropic
requests, sends their Converse translation to the fake, and translates the
answers back, so the real SDKs can be pointed at it.
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from ext_proc.apis import WireAPI
from ext_proc.deploy.echo import ReceivedRequest, ThreadedUpstream
from ext_proc.errors import GatewayError, error_body
from ext_proc.translate.bedrock import (
    STREAM_CONTENT_TYPE,
    errors,
    request_from_anthropic,
    request_from_openai,
    response_to_anthropic,
    response_to_openai,
    stream_to_anthropic,
    stream_to_openai,
)
from ext_proc.translate.bedrock.converse import ConverseRequest
from ext_proc.translate.eventstream import encode_message

__all__ = [
    "REASONING_SIGNATURE",
    "REASONING_TEXT",
    "REPLY_TEXT",
    "TOOL_ARGUMENTS",
    "TOOL_USE_ID",
    "USAGE",
    "FakeBedrock",
    "Reply",
    "TranslatingProxy",
    "converse_answer",
    "converse_events",
    "error_reply",
    "event_frame",
    "exception_frame",
    "stream_reply",
]

REPLY_TEXT = "Bonjour ! Un café ☕, s'il vous plaît."
"""Multi-byte characters, so some cuts land inside one."""
REASONING_TEXT = "The user greets me in French; answer in kind."
REASONING_SIGNATURE = "EqQBCkYIBhgCIkB0c2lnbmF0dXJl"
TOOL_ARGUMENTS = {"location": "Paris, France", "unit": "celsius"}
TOOL_USE_ID = "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
USAGE = {
    "inputTokens": 21,
    "outputTokens": 13,
    "totalTokens": 38,
    "cacheReadInputTokens": 4,
    "cacheWriteInputTokens": 0,
}

PIECE_SIZES = (1, 4, 2, 9, 3, 17, 5, 31, 7, 64)
"""Byte counts the body is cut into, in turn: preludes, headers and CRCs get split."""
PAUSE_S = 0.001


@dataclass
class Reply:
    """A scripted answer in place of the native one."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


# --- Converse wire format -----------------------------------------------------------


def _wants_thinking(request: dict[str, Any]) -> bool:
    fields = request.get("additionalModelRequestFields") or {}
    return isinstance(fields, dict) and isinstance(fields.get("thinking"), dict)


def _first_tool(request: dict[str, Any]) -> str | None:
    for tool in (request.get("toolConfig") or {}).get("tools") or []:
        spec = tool.get("toolSpec")
        if spec:
            return str(spec["name"])
    return None


def converse_answer(request: dict[str, Any]) -> dict[str, Any]:
    """The Converse JSON Bedrock would answer ``request`` with."""
    tool = _first_tool(request)
    content: list[dict[str, Any]] = []
    if _wants_thinking(request):
        reasoning = {"text": REASONING_TEXT, "signature": REASONING_SIGNATURE}
        content.append({"reasoningContent": {"reasoningText": reasoning}})
    if tool is None:
        content.append({"text": REPLY_TEXT})
        stop_reason = "end_turn"
    else:
        content.append({"text": "Let me check the weather."})
        content.append(
            {"toolUse": {"toolUseId": TOOL_USE_ID, "name": tool, "input": TOOL_ARGUMENTS}}
        )
        stop_reason = "tool_use"
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": USAGE,
        "metrics": {"latencyMs": 412},
    }


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def converse_events(request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The ConverseStream events for the same answer, as Bedrock orders them."""
    answer = converse_answer(request)
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    for index, block in enumerate(answer["output"]["message"]["content"]):
        if "reasoningContent" in block:
            reasoning = block["reasoningContent"]["reasoningText"]
            for word in _words(reasoning["text"]):
                delta = {"reasoningContent": {"text": word}}
                events.append(("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
            delta = {"reasoningContent": {"signature": reasoning["signature"]}}
            events.append(("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        elif "text" in block:
            for word in _words(block["text"]):
                delta = {"text": word}
                events.append(("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        else:
            use = block["toolUse"]
            start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
            events.append(("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            arguments = json.dumps(use["input"])
            for piece in (arguments[:9], arguments[9:23], arguments[23:]):
                delta = {"toolUse": {"input": piece}}
                events.append(("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        events.append(("contentBlockStop", {"contentBlockIndex": index}))
    events.append(("messageStop", {"stopReason": answer["stopReason"]}))
    events.append(("metadata", {"usage": answer["usage"], "metrics": answer["metrics"]}))
    return events


def event_frame(event_type: str, payload: dict[str, Any]) -> bytes:
    # Bedrock pads every event with a "p" field so lengths do not leak the text.
    body = json.dumps({**payload, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGH"[: 3 + len(event_type)]})
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, body.encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, json.dumps({"message": message}).encode())


def error_reply(status: int, error_type: str, message: str) -> Reply:
    """A Converse error as Bedrock sends it: the name in a header, the message in JSON."""
    header = f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    return Reply(
        status,
        body=json.dumps({"message": message}).encode(),
        headers={"x-amzn-ErrorType": header},
    )


def stream_reply(frames: list[bytes]) -> Reply:
    return Reply(content_type=STREAM_CONTENT_TYPE, body=b"".join(frames))


# --- the server ---------------------------------------------------------------------


def _native_reply(path: str, request: dict[str, Any]) -> Reply:
    if path.endswith("/converse-stream"):
        return stream_reply([event_frame(k, p) for k, p in converse_events(request)])
    return Reply(body=json.dumps(converse_answer(request)).encode())


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

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = ReceivedRequest(self.command, self.path, headers, body)
        fake = self.server.fake
        fake.record(request)
        path = urlsplit(self.path).path
        reply = fake.next_reply()
        if reply is None:
            if not (
                path.startswith("/model/") and path.endswith(("/converse", "/converse-stream"))
            ):
                reply = error_reply(404, "UnknownOperationException", f"no operation at {path}")
            else:
                try:
                    reply = _native_reply(path, request.json())
                except ValueError:
                    reply = error_reply(400, "SerializationException", "invalid JSON")
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        streaming = reply.content_type == STREAM_CONTENT_TYPE
        self.send_response(reply.status)
        self.send_header("content-type", reply.content_type)
        self.send_header("x-amzn-requestid", str(uuid.uuid4()))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if streaming:
            self.send_header("transfer-encoding", "chunked")
        else:
            self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        if not streaming:
            self.wfile.write(reply.body)
            self.wfile.flush()
            return
        for piece in _pieces(reply.body):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(PAUSE_S)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeBedrock


class FakeBedrock(ThreadedUpstream):
    """A Bedrock runtime on ``127.0.0.1`` (a free port), served from a thread."""

    def __init__(self) -> None:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        super().__init__(server, "bedrock", thread_name="fake-bedrock")
        self._replies: list[Reply] = []

    def queue(self, reply: Reply) -> Reply:
        with self._lock:
            self._replies.append(reply)
        return reply

    def next_reply(self) -> Reply | None:
        with self._lock:
            return self._replies.pop(0) if self._replies else None

    def model_ids(self) -> list[str]:
        """The model id of each request received, decoded from its path."""
        return [unquote(r.path.split("/")[2]) for r in self.requests]


# --- the translating proxy ----------------------------------------------------------

READ_SIZE = 4096
TIMEOUT_S = 10.0
CREATED = 1_750_000_000


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _ProxyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        client = WireAPI.ANTHROPIC if self.path.endswith("/v1/messages") else WireAPI.OPENAI
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        model = str(body.get("model", ""))
        try:
            if client is WireAPI.OPENAI:
                request = request_from_openai.translate_request(body, model_id=model)
            else:
                request = request_from_anthropic.translate_request(body, model_id=model)
        except GatewayError as error:
            self._answer(error.status, "application/json", error_body(client, error))
            return
        self._forward(client, model, request)

    def _forward(self, client: WireAPI, model: str, request: ConverseRequest) -> None:
        upstream = http.client.HTTPConnection(
            "127.0.0.1", self.server.upstream_port, timeout=TIMEOUT_S
        )
        try:
            upstream.request(
                "POST",
                request.path,
                body=json.dumps(request.body).encode(),
                headers={
                    "content-type": "application/json",
                    "authorization": f"Bearer {self.server.api_key}",
                },
            )
            response = upstream.getresponse()
            request_id = response.getheader("x-amzn-requestid", "")
            if response.status != 200:
                body = errors.translate_error(
                    client, response.status, response.read(), response.getheader("x-amzn-errortype")
                )
                self._answer(response.status, "application/json", body)
            elif request.stream:
                self._stream(client, model, request, request_id, response)
            else:
                answer = json.loads(response.read())
                translated: dict[str, Any]
                if client is WireAPI.OPENAI:
                    translated = response_to_openai.translate_response(
                        answer, model=model, response_id=f"chatcmpl-{request_id}", created=CREATED
                    )
                else:
                    translated = response_to_anthropic.translate_response(
                        answer, model=model, message_id=f"msg_{request_id}"
                    )
                self._answer(200, "application/json", json.dumps(translated).encode())
        finally:
            upstream.close()

    def _stream(
        self,
        client: WireAPI,
        model: str,
        request: ConverseRequest,
        request_id: str,
        response: http.client.HTTPResponse,
    ) -> None:
        translator: stream_to_openai.StreamTranslator | stream_to_anthropic.StreamTranslator
        if client is WireAPI.OPENAI:
            translator = stream_to_openai.StreamTranslator(
                model=model,
                response_id=f"chatcmpl-{request_id}",
                created=CREATED,
                include_usage=request.include_usage,
            )
        else:
            translator = stream_to_anthropic.StreamTranslator(
                model=model, message_id=f"msg_{request_id}"
            )
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        while chunk := response.read1(READ_SIZE):
            self._chunk(translator.feed(chunk))
        self._chunk(translator.finish())
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    upstream_port: int
    api_key: str


class TranslatingProxy(ThreadedUpstream):
    """OpenAI ``/v1/chat/completions`` and Anthropic ``/v1/messages`` in, Converse out."""

    def __init__(self, upstream_port: int, api_key: str) -> None:
        server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        server.upstream_port = upstream_port
        server.api_key = api_key
        super().__init__(server, "bedrock-proxy", thread_name="bedrock-proxy")
