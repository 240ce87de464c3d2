"""An Anthropic Messages request as a Bedrock Converse request.

Content blocks map one to one: text, inline images and documents, ``tool_use``
and ``tool_result``, ``thinking`` (as ``reasoningContent``, signature kept, so
a Claude model on Bedrock can continue its own reasoning). ``cache_control`` on
a block becomes a Converse ``cachePoint`` right after it. ``thinking``
configuration goes through ``additionalModelRequestFields``, where Claude on
Bedrock reads it. Refused with a 400 naming the field: server tools, MCP
servers, containers, linked images and documents, ``disable_parallel_tool_use``.
Dropped, as hints with no Converse equivalent (as the Anthropic -> OpenAI
translator drops them): ``top_k``, ``metadata``, ``service_tier``,
``output_config.effort``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from ext_proc.translate.bedrock.converse import ConverseRequest
from ext_proc.translate.bedrock.request_parts import (
    NO_TOOL_CHOICE,
    append_turn,
    document_block,
    image_block,
    inference_config,
    output_config,
    tool_config,
    tool_result_part,
    tool_spec,
)
from ext_proc.translate.common import (
    anthropic_client_tools,
    as_dict,
    as_list,
    each_anthropic_message,
    unsupported,
)

__all__ = ["translate_request"]

_CACHE_POINT = {"cachePoint": {"type": "default"}}


def translate_request(body: Mapping[str, Any], *, model_id: str) -> ConverseRequest:
    """The Converse request for an Anthropic request; ``model_id`` is Bedrock's id."""
    for name in ("mcp_servers", "container"):
        if body.get(name):
            raise unsupported(name, f"'{name}' runs on Anthropic's servers only.")
    messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"messages": messages}
    system = _system(body.get("system"))
    if system:
        out["system"] = system
    stop = [s for s in as_list(body.get("stop_sequences")) if isinstance(s, str) and s]
    config = inference_config(
        body.get("max_tokens"), body.get("temperature"), body.get("top_p"), stop
    )
    if config:
        out["inferenceConfig"] = config
    tools = _tools(body.get("tools"))
    choice = as_dict(body.get("tool_choice"))
    if choice.get("disable_parallel_tool_use") is True:
        raise unsupported(
            "tool_choice",
            "Bedrock Converse cannot forbid parallel tool use; drop disable_parallel_tool_use.",
        )
    toolbox = tool_config(tools, _tool_choice(choice) if choice else None, messages)
    if toolbox is not None:
        out["toolConfig"] = toolbox
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") != "disabled":
        out["additionalModelRequestFields"] = {"thinking": thinking}
    output = as_dict(body.get("output_config"))
    output_format = as_dict(output.get("format"))
    if output_format:
        if output_format.get("type") != "json_schema":
            raise unsupported(
                "output_config",
                f"output_config.format type {output_format.get('type')!r} is not translated.",
            )
        out["outputConfig"] = output_config(
            output_format.get("schema"), None, "output_config.format"
        )
    return ConverseRequest(model_id, body.get("stream") is True, out)


def _system(system: object) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [{"text": system}] if system else []
    blocks: list[dict[str, Any]] = []
    for i, block in enumerate(as_list(system)):
        block = as_dict(block)
        if block.get("type") != "text":
            raise unsupported("system", f"system[{i}]: only text blocks are allowed.")
        if block.get("text"):
            blocks.append({"text": block["text"]})
        _cache_point(block, blocks)
    return blocks


def _cache_point(block: dict[str, Any], blocks: list[dict[str, Any]]) -> None:
    """Anthropic marks the block that ends a cached prefix; Converse puts a
    ``cachePoint`` after it. Caching is a hint: a ``ttl`` Bedrock lacks only
    makes the cache expire sooner, never changes the answer."""
    if isinstance(block.get("cache_control"), dict):
        blocks.append(dict(_CACHE_POINT))


def _messages(raw: object) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for i, role, message in each_anthropic_message(raw):
        append_turn(turns, role, _blocks(message.get("content"), f"messages[{i}].content"))
    return turns


def _blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for j, block in enumerate(as_list(content)):
        block = as_dict(block)
        here = f"{where}[{j}]"
        converted = _block(block, here)
        if converted is not None:
            blocks.append(converted)
        _cache_point(block, blocks)
    return blocks


def _block(block: dict[str, Any], where: str) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        return {"text": text} if isinstance(text, str) and text else None
    if kind == "image":
        return _image(block, where)
    if kind == "document":
        return _document(block, where)
    if kind == "tool_use":
        return {
            "toolUse": {
                "toolUseId": block.get("id"),
                "name": block.get("name"),
                "input": as_dict(block.get("input")),
            }
        }
    if kind == "tool_result":
        return _tool_result(block, where)
    if kind == "thinking":
        reasoning: dict[str, Any] = {"text": block.get("thinking", "")}
        if block.get("signature"):
            reasoning["signature"] = block["signature"]
        return {"reasoningContent": {"reasoningText": reasoning}}
    if kind == "redacted_thinking":
        return {"reasoningContent": {"redactedContent": block.get("data", "")}}
    raise unsupported(where, f"{where}: a {kind!r} block is not translated for Bedrock.")


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = as_dict(block.get("source"))
    if source.get("type") != "base64":
        raise unsupported(where, f"{where}: Bedrock takes images inline only (source type base64).")
    return image_block(str(source.get("media_type", "")), str(source.get("data", "")), where)


def _document(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = as_dict(block.get("source"))
    kind = source.get("type")
    if kind == "text":
        data = base64.b64encode(str(source.get("data", "")).encode()).decode()
        return document_block("text/plain", data, block.get("title"), where)
    if kind != "base64":
        raise unsupported(where, f"{where}: only inline (base64 or text) documents translate.")
    media_type = str(source.get("media_type", "application/pdf"))
    return document_block(media_type, str(source.get("data", "")), block.get("title"), where)


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    content = block.get("content")
    parts: list[dict[str, Any]] = []
    if isinstance(content, str):
        parts.append(tool_result_part(content))
    else:
        for k, part in enumerate(as_list(content)):
            part = as_dict(part)
            kind = part.get("type")
            if kind == "text":
                parts.append(tool_result_part(str(part.get("text", ""))))
            elif kind == "image":
                parts.append(_image(part, f"{where}.content[{k}]"))
            elif kind == "document":
                parts.append(_document(part, f"{where}.content[{k}]"))
            else:
                raise unsupported(where, f"{where}: a {kind!r} tool result is not translated.")
    return {
        "toolResult": {
            "toolUseId": block.get("tool_use_id"),
            "content": parts or [{"text": ""}],
            "status": "error" if block.get("is_error") is True else "success",
        }
    }


def _tools(raw: object) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    for tool in anthropic_client_tools(raw):
        tools.append(
            tool_spec(
                tool.get("name"),
                tool.get("description"),
                tool.get("input_schema"),
                tool.get("strict") is True,
            )
        )
        _cache_point(tool, tools)
    return tools


def _tool_choice(choice: dict[str, Any]) -> dict[str, Any] | str:
    kind = choice.get("type")
    if kind == "auto":
        return {"auto": {}}
    if kind == "any":
        return {"any": {}}
    if kind == "none":
        return NO_TOOL_CHOICE
    if kind == "tool":
        return {"tool": {"name": choice.get("name")}}
    raise unsupported("tool_choice", f"tool_choice type {kind!r} is not translated.")
