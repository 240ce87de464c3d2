"""An OpenAI chat-completions request as an Anthropic Messages request.

Fields the Messages API cannot honour (``n > 1``, logprobs, audio,
``json_object``) are refused with a 400 naming them, rather than dropped so that
the client silently gets something else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.errors import GatewayError
from ext_proc.translate.common import (
    as_dict,
    as_list,
    each_chat_message,
    function_tools,
    split_data_url,
    tool_call_input,
    unsupported,
)

__all__ = ["DEFAULT_MAX_TOKENS", "translate_request", "wants_stream_usage"]

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires ``max_tokens``; OpenAI clients often send none."""

_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def translate_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Anthropic request for an OpenAI chat request (``model`` already rewritten)."""
    _refuse_unsupported(body)
    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"model": body.get("model"), "max_tokens": _max_tokens(body)}
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    out["messages"] = messages
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [s for s in stop if isinstance(s, str)]
    temperature = body.get("temperature")
    if _is_number(temperature):
        # OpenAI allows 0..2, Anthropic 0..1. Clamping keeps the common 0..1
        # values exact; scaling would turn every 0.7 into 0.35.
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    top_p = body.get("top_p")
    if _is_number(top_p):
        out["top_p"] = top_p
    if body.get("stream") is True:
        out["stream"] = True
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    output_format = _output_format(body.get("response_format"))
    if output_format is not None:
        out["output_config"] = {"format": output_format}
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported("n", "Anthropic models return one choice; 'n' must be 1 or absent.")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise unsupported("logprobs", "Anthropic models do not return log probabilities.")
    if body.get("audio") or "audio" in as_list(body.get("modalities")):
        raise unsupported("modalities", "Anthropic models do not produce audio.")
    if body.get("functions") or body.get("function_call"):
        raise unsupported(
            "functions", "The legacy 'functions' API is not translated; send 'tools' instead."
        )
    response_format = as_dict(body.get("response_format")).get("type")
    if response_format not in (None, "text", "json_schema"):
        raise unsupported(
            "response_format",
            f"response_format {response_format!r} has no Anthropic equivalent; "
            "send a json_schema response_format instead.",
        )


def _output_format(response_format: object) -> dict[str, Any] | None:
    """OpenAI's structured outputs as Anthropic's: the same JSON schema."""
    response_format = as_dict(response_format)
    if response_format.get("type") != "json_schema":
        return None
    schema = as_dict(response_format.get("json_schema")).get("schema")
    if not isinstance(schema, dict):
        raise unsupported("response_format", "response_format.json_schema.schema is missing.")
    return {"type": "json_schema", "schema": schema}


def _max_tokens(body: Mapping[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return DEFAULT_MAX_TOKENS


def _messages(raw: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(system blocks, messages)``: system and developer messages are lifted out
    wherever they appear, and consecutive turns of one role are merged because
    the Messages API wants user and assistant to alternate."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, role, message in each_chat_message(raw):
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_text_blocks(content, f"messages[{i}].content"))
        elif role == "user":
            _append_turn(turns, "user", _user_content(content, i))
        elif role == "assistant":
            blocks = _assistant_blocks(message, i)
            if blocks:
                _append_turn(turns, "assistant", blocks)
        else:
            _append_turn(turns, "user", [_tool_result(message, i)])
    return system, turns


def _append_turn(turns: list[dict[str, Any]], role: str, content: str | list[Any]) -> None:
    if turns and turns[-1]["role"] == role:
        previous = turns[-1]["content"]
        merged = _as_blocks(previous) + _as_blocks(content)
        turns[-1]["content"] = merged
    else:
        turns.append({"role": role, "content": content})


def _as_blocks(content: str | list[Any]) -> list[Any]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _text_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in as_list(content):
        part = as_dict(part)
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if isinstance(text, str) and text:
                blocks.append({"type": "text", "text": text})
        else:
            raise unsupported(where, f"{where}: a {kind!r} part is not allowed here, only text.")
    return blocks


def _user_content(content: object, i: int) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    where = f"messages[{i}].content"
    blocks: list[dict[str, Any]] = []
    for part in as_list(content):
        part = as_dict(part)
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            blocks.append(_image_block(as_dict(part.get("image_url")).get("url"), where))
        elif kind == "file":
            blocks.append(_document_block(as_dict(part.get("file")), where))
        elif kind == "input_audio":
            raise unsupported(where, "Anthropic models do not accept audio input.")
        else:
            raise unsupported(where, f"{where}: content part type {kind!r} is not translated.")
    return blocks


def _image_block(url: object, where: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise GatewayError(
            400, f"{where}: image_url.url is missing.", code="invalid_request", param=where
        )
    inline = split_data_url(url)
    if inline is not None:
        media_type, data = inline
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise unsupported(where, f"{where}: an image URL must be http(s) or a base64 data URL.")


def _document_block(file: dict[str, Any], where: str) -> dict[str, Any]:
    inline = split_data_url(file.get("file_data") or "")
    if inline is None:
        raise unsupported(
            where, f"{where}: only inline files (file_data as a base64 data URL) are translated."
        )
    media_type, data = inline
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }
    filename = file.get("filename")
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


def _assistant_blocks(message: Mapping[str, Any], i: int) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.get("content"), f"messages[{i}].content")
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        blocks.append({"type": "text", "text": refusal})
    for j, call in enumerate(as_list(message.get("tool_calls"))):
        call = as_dict(call)
        function = as_dict(call.get("function"))
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": tool_call_input(function, i, j, "Anthropic"),
            }
        )
    return blocks


def _tool_result(message: Mapping[str, Any], i: int) -> dict[str, Any]:
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    if isinstance(content, str):
        block["content"] = content
    else:
        block["content"] = _text_blocks(content, f"messages[{i}].content")
    return block


def _tools(raw: object) -> list[dict[str, Any]]:
    tools = []
    for function in function_tools(raw):
        out: dict[str, Any] = {"name": function.get("name")}
        if function.get("description"):
            out["description"] = function["description"]
        out["input_schema"] = function.get("parameters") or _EMPTY_SCHEMA
        tools.append(out)
    return tools


def _tool_choice(choice: object, parallel: object) -> dict[str, Any] | None:
    if choice == "none":
        return {"type": "none"}
    out: dict[str, Any]
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out = {"type": "tool", "name": as_dict(choice.get("function")).get("name")}
    else:
        raise unsupported("tool_choice", f"tool_choice {choice!r} is not translated.")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # the client left it to the default, which is auto on both sides
    return out


def wants_stream_usage(body: Mapping[str, Any]) -> bool:
    """Whether a streaming client asked for ``stream_options.include_usage``: OpenAI
    sends usage in a last chunk only then, while Anthropic's stream always has it."""
    options = body.get("stream_options")
    return bool(
        body.get("stream") is True
        and isinstance(options, dict)
        and options.get("include_usage") is True
    )
