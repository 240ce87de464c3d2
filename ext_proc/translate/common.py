"""Helpers every translator shares: compact JSON, data URLs, and reading an
upstream error whatever shape it came in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ext_proc.apis import ErrorShape, WireAPI
from ext_proc.errors import GatewayError, error_body

__all__ = [
    "UpstreamError",
    "anthropic_client_tools",
    "as_dict",
    "as_list",
    "chat_completion",
    "chat_usage",
    "data_url",
    "dumps",
    "each_anthropic_message",
    "each_chat_message",
    "encode_json",
    "error_in_client_shape",
    "function_tools",
    "message_list",
    "read_upstream_error",
    "split_data_url",
    "tool_call_input",
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


def message_list(raw: object) -> list[Any]:
    """A request's ``messages``, which both APIs require to be a list."""
    if not isinstance(raw, list):
        raise GatewayError(
            400, "'messages' must be a list.", code="invalid_request", param="messages"
        )
    return raw


def each_chat_message(raw: object) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(index, role, message)`` for each OpenAI chat message, checked as it comes."""
    for i, message in enumerate(message_list(raw)):
        if not isinstance(message, dict):
            raise GatewayError(
                400, f"messages[{i}] must be an object.", code="invalid_request", param="messages"
            )
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise GatewayError(
                400,
                f"messages[{i}].role {role!r} is not one of system, developer, user, "
                "assistant, tool.",
                code="invalid_request",
                param="messages",
            )
        yield i, role, message


def each_anthropic_message(raw: object) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(index, role, message)`` for each Anthropic message, checked as it comes."""
    for i, message in enumerate(message_list(raw)):
        message = as_dict(message)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise GatewayError(
                400,
                f"messages[{i}].role must be 'user' or 'assistant', not {role!r}.",
                code="invalid_request",
                param="messages",
            )
        yield i, role, message


def tool_call_input(function: dict[str, Any], i: int, j: int, provider: str) -> dict[str, Any]:
    """An OpenAI ``tool_calls[j].function.arguments`` (a JSON string) as the object
    Anthropic and Converse want as tool input; a non-object value is wrapped."""
    arguments = function.get("arguments") or "{}"
    try:
        tool_input = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise GatewayError(
            400,
            f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON; "
            f"{provider} needs the tool input as an object.",
            code="invalid_request",
            param="messages",
        ) from None
    return tool_input if isinstance(tool_input, dict) else {"value": tool_input}


def function_tools(raw: object) -> Iterator[dict[str, Any]]:
    """The ``function`` of each OpenAI chat tool; any other tool type is refused."""
    for i, tool in enumerate(as_list(raw)):
        tool = as_dict(tool)
        if tool.get("type") != "function":
            raise unsupported(
                "tools", f"tools[{i}] has type {tool.get('type')!r}; only function tools translate."
            )
        yield as_dict(tool.get("function"))


def anthropic_client_tools(raw: object) -> Iterator[dict[str, Any]]:
    """Each Anthropic client tool (``name`` + ``input_schema``, no type or ``custom``);
    a server tool (web search, code execution) runs at Anthropic only, so it is refused."""
    for i, tool in enumerate(as_list(raw)):
        tool = as_dict(tool)
        if tool.get("type") not in (None, "custom"):
            raise unsupported(
                "tools",
                f"tools[{i}] is Anthropic's server tool {tool.get('type')!r}; "
                "only client tools (name + input_schema) translate.",
            )
        yield tool


def chat_usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    """OpenAI's ``usage``: ``prompt`` already counts the ``cached`` tokens."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def chat_completion(
    *,
    response_id: object,
    created: int,
    model: object,
    texts: list[str],
    tool_calls: list[dict[str, Any]],
    finish_reason: str,
    usage: dict[str, Any],
) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` with one choice; ``content`` is ``null`` only
    when the model answered with tool calls alone, as OpenAI sends it."""
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage,
    }
