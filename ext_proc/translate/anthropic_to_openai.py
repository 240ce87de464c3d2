"""An Anthropic Messages client served by an OpenAI-compatible provider.

- ``translate_request``: Anthropic ``/v1/messages`` body -> OpenAI ``/v1/chat/completions`` body;
- ``translate_response``: OpenAI ``chat.completion`` -> Anthropic ``message``;
- ``StreamTranslator``: OpenAI ``chat.completion.chunk`` SSE -> Anthropic SSE events;
- ``translate_error``: OpenAI error body -> Anthropic error body.

Pure functions over dicts and bytes. Server tools and MCP servers, which only
Anthropic runs, are refused with a 400 naming them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ext_proc.errors import GatewayError
from ext_proc.routing.catalog import WireAPI
from ext_proc.translate.common import (
    as_dict,
    as_list,
    data_url,
    dumps,
    error_in_client_shape,
    text_and_tool_calls,
    unsupported,
)
from ext_proc.translate.sse import SSEDecoder, SSEEvent, encode_event

__all__ = [
    "STOP_REASONS",
    "StreamTranslator",
    "translate_error",
    "translate_request",
    "translate_response",
]

STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""OpenAI ``finish_reason`` -> Anthropic ``stop_reason``; anything else is ``end_turn``."""

_CLIENT_TOOL_TYPES = (None, "custom")
"""Anthropic tools the client runs itself; every other type is a server tool."""


# --- request -----------------------------------------------------------------------


def translate_request(
    body: Mapping[str, Any], *, max_tokens_field: str = "max_tokens"
) -> dict[str, Any]:
    """The OpenAI chat request for an Anthropic request (``model`` already rewritten).

    ``max_tokens_field`` is ``max_completion_tokens`` for OpenAI itself, whose
    reasoning models refuse ``max_tokens``; most compatible servers know only
    ``max_tokens``.
    """
    for name in ("mcp_servers", "container"):
        if body.get(name):
            raise unsupported(name, f"'{name}' runs on Anthropic's servers only.")
    messages = _system(body.get("system"))
    messages.extend(_messages(body.get("messages")))
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        out[max_tokens_field] = max_tokens
    stop = body.get("stop_sequences")
    if isinstance(stop, list) and stop:
        out["stop"] = stop
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    if body.get("stream") is True:
        out["stream"] = True
        # Anthropic streams always end with usage; OpenAI's only when asked.
        out["stream_options"] = {"include_usage": True}
    user = as_dict(body.get("metadata")).get("user_id")
    if isinstance(user, str) and user:
        out["user"] = user
    output_format = as_dict(as_dict(body.get("output_config")).get("format"))
    if output_format.get("type") == "json_schema":
        # OpenAI wants the schema named; Anthropic's has no name.
        schema = {"name": "response", "schema": output_format.get("schema")}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = as_dict(body.get("tool_choice"))
        if choice:
            mapped = _tool_choice(choice)
            if mapped is not None:
                out["tool_choice"] = mapped
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
    return out


def _system(system: object) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    texts = [as_dict(b).get("text") for b in as_list(system)]
    text = "\n\n".join(t for t in texts if isinstance(t, str) and t)
    return [{"role": "system", "content": text}] if text else []


def _messages(raw: object) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise GatewayError(
            400, "'messages' must be a list.", code="invalid_request", param="messages"
        )
    out: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        message = as_dict(message)
        role = message.get("role")
        content = message.get("content")
        if role == "user":
            out.extend(_user_messages(content, i))
        elif role == "assistant":
            out.append(_assistant_message(content))
        else:
            raise GatewayError(
                400,
                f"messages[{i}].role must be 'user' or 'assistant', not {role!r}.",
                code="invalid_request",
                param="messages",
            )
    return out


def _user_messages(content: object, i: int) -> list[dict[str, Any]]:
    """One Anthropic user turn as OpenAI messages: its tool results first, as
    ``tool`` messages (OpenAI wants them right after the assistant's calls),
    then whatever else it said as one ``user`` message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    where = f"messages[{i}].content"
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in as_list(content):
        block = as_dict(block)
        kind = block.get("type")
        if kind == "tool_result":
            text, images = _tool_result_content(block.get("content"), where)
            tool_messages.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
            )
            # Tool messages hold text only; an image a tool returned follows as user input.
            parts.extend(images)
        else:
            parts.append(_user_part(block, where))
    out = tool_messages
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _user_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text", "")}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _source_url(block, where)}}
    if kind == "document":
        source = as_dict(block.get("source"))
        if source.get("type") == "text":
            return {"type": "text", "text": source.get("data", "")}
        if source.get("type") != "base64":
            raise unsupported(where, f"{where}: only inline (base64) documents are translated.")
        file = {
            "filename": block.get("title") or "document.pdf",
            "file_data": data_url(source.get("media_type", "application/pdf"), source["data"]),
        }
        return {"type": "file", "file": file}
    raise unsupported(where, f"{where}: a {kind!r} block is not translated for this model.")


def _source_url(block: dict[str, Any], where: str) -> str:
    source = as_dict(block.get("source"))
    if source.get("type") == "base64":
        return data_url(str(source.get("media_type")), str(source.get("data")))
    if source.get("type") == "url":
        return str(source.get("url"))
    raise unsupported(where, f"{where}: image source {source.get('type')!r} is not translated.")


def _tool_result_content(content: object, where: str) -> tuple[str, list[dict[str, Any]]]:
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for block in as_list(content):
        block = as_dict(block)
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "image":
            images.append({"type": "image_url", "image_url": {"url": _source_url(block, where)}})
        else:
            raise unsupported(
                where, f"{where}: a {block.get('type')!r} tool result is not translated."
            )
    return "\n".join(texts), images


def _assistant_message(content: object) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    # Thinking blocks are the Anthropic model's own; another model cannot use them.
    texts, tool_calls = text_and_tool_calls(content)
    # OpenAI accepts a null content only beside tool calls.
    content = "".join(texts) if texts or not tool_calls else None
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _tools(raw: object) -> list[dict[str, Any]]:
    tools = []
    for i, tool in enumerate(as_list(raw)):
        tool = as_dict(tool)
        if tool.get("type") not in _CLIENT_TOOL_TYPES:
            raise unsupported(
                "tools",
                f"tools[{i}] is Anthropic's server tool {tool.get('type')!r}; "
                "only client tools (name + input_schema) translate.",
            )
        function: dict[str, Any] = {"name": tool.get("name")}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(choice: dict[str, Any]) -> str | dict[str, Any] | None:
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise unsupported("tool_choice", f"tool_choice type {kind!r} is not translated.")


# --- response ----------------------------------------------------------------------


def translate_response(completion: Mapping[str, Any]) -> dict[str, Any]:
    """The Anthropic ``message`` for an OpenAI ``chat.completion``."""
    choice = as_dict(next(iter(as_list(completion.get("choices"))), None))
    reply = as_dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    text = reply.get("content")
    if isinstance(text, list):
        text = "".join(as_dict(p).get("text", "") for p in text)
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = reply.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in as_list(reply.get("tool_calls")):
        call = as_dict(call)
        function = as_dict(call.get("function"))
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _tool_input(function.get("arguments")),
            }
        )
    if not content and isinstance(text, str):
        content.append({"type": "text", "text": ""})
    return {
        "id": completion.get("id"),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": content,
        "stop_reason": _stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": anthropic_usage(as_dict(completion.get("usage"))),
    }


def _stop_reason(finish_reason: object) -> str:
    if isinstance(finish_reason, str):
        return STOP_REASONS.get(finish_reason, "end_turn")
    return "end_turn"


def _tool_input(arguments: object) -> dict[str, Any]:
    """Tool arguments as the object Anthropic clients expect.

    A model can emit arguments that are not JSON; they are kept under
    ``_raw_arguments`` rather than lost, so the client can see what came back.
    """
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {"_raw_arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def anthropic_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic counts cached prompt tokens apart from ``input_tokens``; OpenAI inside."""
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    cached = as_dict(usage.get("prompt_tokens_details")).get("cached_tokens")
    cached = cached if isinstance(cached, int) else 0
    prompt = prompt if isinstance(prompt, int) else 0
    out: dict[str, Any] = {
        "input_tokens": max(prompt - cached, 0),
        "output_tokens": completion if isinstance(completion, int) else 0,
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def translate_error(status: int, body: bytes) -> bytes:
    """An Anthropic error body for an upstream error; Envoy's own replies are already one."""
    return error_in_client_shape(WireAPI.ANTHROPIC, status, body)


# --- stream ------------------------------------------------------------------------


class StreamTranslator:
    """OpenAI ``chat.completion.chunk`` SSE in, Anthropic SSE events out.

    Anthropic content blocks are sequential: text and each tool call become
    their own block, opened on first sight and closed when another starts.
    OpenAI reports usage in a chunk after ``finish_reason``, so ``message_delta``
    and ``message_stop`` wait for ``[DONE]`` (or the end of the stream).
    """

    __slots__ = (
        "_decoder",
        "_done",
        "_next_block",
        "_open_block",
        "_started",
        "_stop_reason",
        "_text_open",
        "_tool_blocks",
        "_usage",
    )

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._started = False
        self._next_block = 0
        self._open_block: int | None = None
        self._text_open = False
        self._tool_blocks: dict[int, int] = {}
        """OpenAI ``tool_calls[].index`` -> Anthropic content block index."""
        self._stop_reason: str | None = None
        self._usage: dict[str, Any] = {}
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self._decoder.feed(chunk))

    def finish(self) -> bytes:
        out = bytearray(self._translate(self._decoder.flush()))
        if not self._done:
            if self._stop_reason is not None:
                self._close(out)
            else:
                # Without a finish_reason the answer was cut off: say so rather
                # than end it as if it were whole.
                self._error(out, "The model provider's stream ended before the answer did.")
        return bytes(out)

    def _translate(self, events: list[SSEEvent]) -> bytes:
        out = bytearray()
        for event in events:
            if self._done:
                break
            if event.data == "[DONE]":
                self._close(out)
                continue
            try:
                payload = json.loads(event.data)
            except ValueError:
                continue
            if not isinstance(payload, dict):
                continue
            error = payload.get("error")
            if error is not None:
                message = as_dict(error).get("message") if isinstance(error, dict) else error
                self._error(out, str(message or "The model provider reported an error mid-stream."))
            else:
                self._chunk(payload, out)
        return bytes(out)

    def _chunk(self, chunk: dict[str, Any], out: bytearray) -> None:
        if not self._started:
            self._start(chunk, out)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        for choice in as_list(chunk.get("choices")):
            choice = as_dict(choice)
            delta = as_dict(choice.get("delta"))
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._text(text, out)
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                self._text(refusal, out)
            for position, call in enumerate(as_list(delta.get("tool_calls"))):
                self._tool_call(as_dict(call), position, out)
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                self._stop_reason = _stop_reason(finish_reason)
                self._close_block(out)

    def _start(self, chunk: dict[str, Any], out: bytearray) -> None:
        self._started = True
        message = {
            "id": chunk.get("id", ""),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Input tokens are only known at the end; message_delta carries them.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        out += _event("message_start", {"type": "message_start", "message": message})

    def _text(self, text: str, out: bytearray) -> None:
        if not self._text_open:
            self._close_block(out)
            self._open(out, {"type": "text", "text": ""})
            self._text_open = True
        out += _delta_event(self._open_block, "text_delta", "text", text)

    def _tool_call(self, call: dict[str, Any], position: int, out: bytearray) -> None:
        index = call.get("index", position)
        function = as_dict(call.get("function"))
        block = self._tool_blocks.get(index)
        if block is None:
            self._close_block(out)
            tool_id = call.get("id") or f"toolu_archway_{index}"
            self._open(
                out, {"type": "tool_use", "id": tool_id, "name": function.get("name"), "input": {}}
            )
            block = self._tool_blocks[index] = self._next_block - 1
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out += _delta_event(block, "input_json_delta", "partial_json", arguments)

    def _open(self, out: bytearray, block: dict[str, Any]) -> None:
        self._open_block = self._next_block
        self._next_block += 1
        out += _event(
            "content_block_start",
            {"type": "content_block_start", "index": self._open_block, "content_block": block},
        )

    def _close_block(self, out: bytearray) -> None:
        if self._open_block is not None:
            out += _event(
                "content_block_stop", {"type": "content_block_stop", "index": self._open_block}
            )
            self._open_block = None
            self._text_open = False

    def _close(self, out: bytearray) -> None:
        if self._done:
            return
        if not self._started:
            self._start({}, out)
        self._close_block(out)
        delta = {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}
        usage = anthropic_usage(self._usage)
        out += _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        out += _event("message_stop", {"type": "message_stop"})
        self._done = True

    def _error(self, out: bytearray, message: str) -> None:
        error = {"type": "error", "error": {"type": "api_error", "message": message}}
        out += _event("error", error)
        self._done = True


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return encode_event(dumps(payload), name)


def _delta_event(index: int | None, kind: str, field: str, value: str) -> bytes:
    # Most events of a stream are deltas: formatted directly, one small dumps each.
    return (
        'event: content_block_delta\ndata: {"type":"content_block_delta",'
        f'"index":{index},"delta":{{"type":"{kind}","{field}":{dumps(value)}}}}}\n\n'
    ).encode()
