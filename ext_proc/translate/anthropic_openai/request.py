"""An Anthropic Messages request as an OpenAI chat-completions request.

Server tools and MCP servers, which only Anthropic runs, are refused with a 400
naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.apis import COMMON_DIALECT, Dialect
from ext_proc.translate.common import (
    anthropic_client_tools,
    as_dict,
    as_list,
    data_url,
    each_anthropic_message,
    text_and_tool_calls,
    unsupported,
)

__all__ = ["translate_request"]


def translate_request(body: Mapping[str, Any], dialect: Dialect = COMMON_DIALECT) -> dict[str, Any]:
    """The OpenAI chat request for an Anthropic request (``model`` already
    rewritten), in the provider's ``dialect``."""
    for name in ("mcp_servers", "container"):
        if body.get(name):
            raise unsupported(name, f"'{name}' runs on Anthropic's servers only.")
    messages = _system(body.get("system"))
    messages.extend(_messages(body.get("messages")))
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        out[dialect.max_tokens_field] = max_tokens
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
    out: list[dict[str, Any]] = []
    for i, role, message in each_anthropic_message(raw):
        content = message.get("content")
        if role == "user":
            out.extend(_user_messages(content, i))
        else:
            out.append(_assistant_message(content))
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
    for tool in anthropic_client_tools(raw):
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
