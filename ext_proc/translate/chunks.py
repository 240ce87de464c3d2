"""OpenAI ``chat.completion.chunk`` SSE as every translator towards OpenAI writes it.

Most events of a stream are small deltas, so each stream builds the part of a
chunk that never changes (id, created, model) once, and a delta costs one
small ``dumps``.
"""

from __future__ import annotations

from typing import Any

from ext_proc.translate.common import dumps
from ext_proc.translate.sse import encode_event

__all__ = ["DONE", "chunk_event", "chunk_head", "error_event", "usage_event"]

DONE = b"data: [DONE]\n\n"


def chunk_head(response_id: str, created: int, model: str) -> str:
    """Everything in a chunk before its delta."""
    return (
        f'{{"id":{dumps(response_id)},"object":"chat.completion.chunk",'
        f'"created":{created},"model":{dumps(model)},"choices":[{{"index":0,"delta":'
    )


def chunk_event(head: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    tail = ',"logprobs":null,"finish_reason":' + (dumps(finish) if finish else "null") + "}]}"
    return encode_event(head + dumps(delta) + tail)


def usage_event(response_id: str, created: int, model: str, usage: dict[str, Any]) -> bytes:
    """As OpenAI does: one last chunk with no choices, carrying the usage."""
    final = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }
    return encode_event(dumps(final))


def error_event(message: object, code: object, kind: str = "server_error") -> bytes:
    """An error mid-stream, as OpenAI sends it: a chunk holding only ``error``."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return encode_event(dumps(body))
