"""Helpers every translator shares: compact JSON, data URLs, and reading an
upstream error whatever shape it came in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ext_proc.apis import ErrorShape, WireAPI
from ext_proc.errors import GatewayError, error_body

__all__ = [
    "UpstreamError",
    "as_dict",
    "as_list",
    "data_url",
    "dumps",
    "encode_json",
    "error_in_client_shape",
    "read_upstream_error",
    "split_data_url",
    "unsupported",
]

_ERROR_PREVIEW_CHARS = 500


def dumps(value: Any) -> str:
    """Compact JSON that keeps non-ASCII text as is (smaller, and what providers send)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def encode_json(value: Any) -> bytes:
    """A body Archway writes, as ``dumps`` words it, in UTF-8.

    A lone surrogate escape (``"\\ud800"``) is valid JSON but not encodable as
    UTF-8; re-escaping everything then sends exactly what the other side wrote.
    """
    try:
        return dumps(value).encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def unsupported(param: str, message: str) -> GatewayError:
    """A request field the other API cannot honour: a 400 naming it, never a silent drop."""
    return GatewayError(400, message, code="unsupported_parameter", param=param)


def split_data_url(url: str) -> tuple[str, str] | None:
    """``data:<media type>;base64,<data>`` as ``(media type, data)``, else ``None``."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not media_type:
        return None
    return media_type, data


def data_url(media_type: str, data: str) -> str:
    return f"data:{media_type};base64,{data}"


@dataclass(frozen=True, slots=True)
class UpstreamError:
    """What an upstream error said, independent of its wire shape."""

    message: str
    kind: str | None
    """OpenAI's ``code`` or ``type``, or Anthropic's ``error.type``."""
    shape: ErrorShape | None
    """``None`` when it was not a JSON error of either shape."""


def read_upstream_error(status: int, body: bytes) -> UpstreamError:
    """Read an error body in OpenAI's shape, Anthropic's, or neither.

    Envoy's own replies (upstream unreachable, timeout) arrive already in the
    client's shape, so the caller can tell them apart by ``shape``.
    """
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            text = message if isinstance(message, str) and message else f"HTTP {status}"
            if parsed.get("type") == "error":
                kind = error.get("type")
                return UpstreamError(
                    text, kind if isinstance(kind, str) else None, ErrorShape.ANTHROPIC
                )
            kind = error.get("code") or error.get("type")
            return UpstreamError(text, kind if isinstance(kind, str) else None, ErrorShape.OPENAI)
        if isinstance(error, str) and error:
            # Several OpenAI-compatible servers (Ollama, vLLM) answer {"error": "..."}.
            return UpstreamError(error, None, None)
    text = body.decode("utf-8", "replace").strip()[:_ERROR_PREVIEW_CHARS]
    message = f"The model provider answered HTTP {status}" + (f": {text}" if text else ".")
    return UpstreamError(message, None, None)


def error_in_client_shape(client: WireAPI, status: int, body: bytes) -> bytes:
    """An upstream error body in the client's API shape, the upstream status kept;
    Envoy's own replies, already in that shape, pass unchanged."""
    error = read_upstream_error(status, body)
    if error.shape is client.error_shape:
        return body
    return error_body(
        client, GatewayError(status, error.message, code=error.kind or "upstream_error")
    )


def text_and_tool_calls(content: object) -> tuple[list[str], list[dict[str, Any]]]:
    """An Anthropic assistant turn's text parts, and its ``tool_use`` blocks as
    OpenAI ``tool_calls``; other blocks (thinking) are dropped."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in as_list(content):
        block = as_dict(block)
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": dumps(block.get("input") or {}),
                    },
                }
            )
    return texts, tool_calls
