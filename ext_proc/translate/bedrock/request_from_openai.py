"""An OpenAI chat-completions request as a Bedrock Converse request.

System and developer messages become ``system`` blocks; user, assistant and
tool messages become alternating Converse turns (tool results ride in the next
user turn, as Converse wants). What Converse cannot honour is refused with a
400 that names the field: ``n > 1``, logprobs, audio, linked (not inline)
images, ``parallel_tool_calls: false``. Hints with no Converse equivalent are
dropped, as the OpenAI -> Anthropic translator drops them (a client that moves
between providers should not start failing): ``seed``, penalties, ``logit_bias``,
``reasoning_effort``, ``user``, ``metadata``, ``store``, ``service_tier``...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.translate.bedrock.converse import ConverseRequest
from ext_proc.translate.bedrock.request_parts import (
    NO_TOOL_CHOICE,
    append_turn,
    document_block,
    image_from_url,
    inference_config,
    output_config,
    tool_config,
    tool_result_part,
    tool_spec,
)
from ext_proc.translate.common import (
    as_dict,
    as_list,
    each_chat_message,
    function_tools,
    split_data_url,
    tool_call_input,
    unsupported,
)

__all__ = ["translate_request"]

_REFUSED_IF_SET = {
    "logprobs": "Bedrock Converse does not return log probabilities.",
    "top_logprobs": "Bedrock Converse does not return log probabilities.",
    "audio": "Bedrock Converse does not produce audio.",
    "functions": "The legacy 'functions' API is not translated; send 'tools' instead.",
    "function_call": "The legacy 'functions' API is not translated; send 'tools' instead.",
}


def translate_request(body: Mapping[str, Any], *, model_id: str) -> ConverseRequest:
    """The Converse request for an OpenAI chat request; ``model_id`` is Bedrock's id
    (``us.amazon.nova-pro-v1:0``), the ``amazon_bedrock/`` prefix already gone."""
    _refuse_unsupported(body)
    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    config = inference_config(
        _max_tokens(body), body.get("temperature"), body.get("top_p"), _stop(body.get("stop"))
    )
    if config:
        out["inferenceConfig"] = config
    tools = _tools(body.get("tools"))
    choice = _tool_choice(body.get("tool_choice")) if tools else None
    if tools and body.get("parallel_tool_calls") is False:
        raise unsupported(
            "parallel_tool_calls",
            "Bedrock Converse cannot forbid parallel tool calls; drop parallel_tool_calls.",
        )
    toolbox = tool_config(tools, choice, messages)
    if toolbox is not None:
        out["toolConfig"] = toolbox
    response_format = as_dict(body.get("response_format"))
    if response_format.get("type") == "json_schema":
        schema = as_dict(response_format.get("json_schema"))
        out["outputConfig"] = output_config(
            schema.get("schema"), schema.get("name"), "response_format"
        )
    stream = body.get("stream") is True
    include_usage = stream and as_dict(body.get("stream_options")).get("include_usage") is True
    return ConverseRequest(model_id, stream, out, include_usage=include_usage)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported("n", "Bedrock Converse returns one choice; 'n' must be 1 or absent.")
    for name, message in _REFUSED_IF_SET.items():
        if body.get(name):
            raise unsupported(name, message)
    if "audio" in as_list(body.get("modalities")):
        raise unsupported("modalities", "Bedrock Converse does not produce audio.")
    kind = as_dict(body.get("response_format")).get("type")
    if kind not in (None, "text", "json_schema"):
        raise unsupported(
            "response_format",
            f"response_format {kind!r} has no Bedrock equivalent; send a json_schema one.",
        )


def _max_tokens(body: Mapping[str, Any]) -> object:
    value = body.get("max_completion_tokens")
    return value if value is not None else body.get("max_tokens")


def _stop(stop: object) -> list[str]:
    if isinstance(stop, str):
        return [stop] if stop else []
    return [s for s in as_list(stop) if isinstance(s, str) and s]


def _messages(raw: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, role, message in each_chat_message(raw):
        where = f"messages[{i}].content"
        if role in ("system", "developer"):
            system.extend(_text_blocks(message.get("content"), where))
        elif role == "user":
            append_turn(turns, "user", _user_blocks(message.get("content"), where))
        elif role == "assistant":
            append_turn(turns, "assistant", _assistant_blocks(message, i))
        else:
            append_turn(turns, "user", [_tool_result(message, where)])
    return system, turns


def _text_blocks(content: object, where: str) -> list[dict[str, Any]]:
    """Text only; Converse refuses blank text blocks, so empty ones are left out."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks = []
    for part in as_list(content):
        part = as_dict(part)
        kind = part.get("type")
        if kind not in ("text", "refusal"):
            raise unsupported(where, f"{where}: a {kind!r} part is not allowed here, only text.")
        text = part.get(kind)
        if isinstance(text, str) and text:
            blocks.append({"text": text})
    return blocks


def _user_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in as_list(content):
        part = as_dict(part)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if isinstance(text, str) and text:
                blocks.append({"text": text})
        elif kind == "image_url":
            blocks.append(image_from_url(as_dict(part.get("image_url")).get("url"), where))
        elif kind == "file":
            file = as_dict(part.get("file"))
            inline = split_data_url(file.get("file_data") or "")
            if inline is None:
                raise unsupported(
                    where, f"{where}: only inline files (file_data as a base64 data URL) translate."
                )
            blocks.append(document_block(inline[0], inline[1], file.get("filename"), where))
        elif kind == "input_audio":
            raise unsupported(where, f"{where}: Bedrock Converse does not take audio input.")
        else:
            raise unsupported(where, f"{where}: content part type {kind!r} is not translated.")
    return blocks


def _assistant_blocks(message: Mapping[str, Any], i: int) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.get("content"), f"messages[{i}].content")
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        blocks.append({"text": refusal})
    for j, call in enumerate(as_list(message.get("tool_calls"))):
        call = as_dict(call)
        function = as_dict(call.get("function"))
        blocks.append(
            {
                "toolUse": {
                    "toolUseId": call.get("id"),
                    "name": function.get("name"),
                    "input": tool_call_input(function, i, j, "Bedrock"),
                }
            }
        )
    return blocks


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    content = [tool_result_part(b["text"]) for b in _text_blocks(message.get("content"), where)]
    return {
        "toolResult": {
            "toolUseId": message.get("tool_call_id"),
            # Converse wants at least one block; an empty result is still a result.
            "content": content or [{"text": ""}],
            "status": "success",
        }
    }


def _tools(raw: object) -> list[dict[str, Any]]:
    tools = []
    for function in function_tools(raw):
        tools.append(
            tool_spec(
                function.get("name"),
                function.get("description"),
                function.get("parameters"),
                function.get("strict") is True,
            )
        )
    return tools


def _tool_choice(choice: object) -> dict[str, Any] | str | None:
    if choice is None:
        return None
    if choice == "none":
        return NO_TOOL_CHOICE
    if choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"tool": {"name": as_dict(choice.get("function")).get("name")}}
    raise unsupported("tool_choice", f"tool_choice {choice!r} is not translated.")
