"""A Responses request as a Chat Completions request, for OpenAI-compatible
providers that have no ``/v1/responses`` of their own.

``instructions`` becomes the first system message; input items become chat
messages in order: consecutive ``function_call`` items are one assistant turn
with several ``tool_calls``, each ``function_call_output`` a ``tool`` message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ext_proc.translate.common import unsupported
from ext_proc.translate.responses.request import Item, ResponsesRequest

__all__ = [
    "add_format_and_tools",
    "chat_messages",
    "chat_tool_choice",
    "chat_tools",
    "translate_request",
]


def translate_request(
    request: ResponsesRequest,
    history: Sequence[Item] = (),
    *,
    max_tokens_field: str = "max_tokens",
) -> dict[str, Any]:
    """The chat request for ``request``, after the stored ``history`` of its previous turns.

    ``max_tokens_field`` is ``max_completion_tokens`` for OpenAI itself, whose
    reasoning models refuse ``max_tokens``; most compatible servers know only
    ``max_tokens``.
    """
    out: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(request.instructions, [*history, *request.items]),
    }
    if request.max_output_tokens is not None:
        out[max_tokens_field] = request.max_output_tokens
    if request.temperature is not None:
        out["temperature"] = request.temperature
    if request.top_p is not None:
        out["top_p"] = request.top_p
    if request.user is not None:
        out["user"] = request.user
    if request.reasoning_effort is not None:
        out["reasoning_effort"] = request.reasoning_effort
    if request.verbosity is not None:
        out["verbosity"] = request.verbosity
    add_format_and_tools(out, request)
    if request.stream:
        out["stream"] = True
        # A Response ends with its usage; a chat stream carries it only when asked.
        out["stream_options"] = {"include_usage": True}
    return out


def add_format_and_tools(chat: dict[str, Any], request: ResponsesRequest) -> None:
    """``text.format`` and the tools, as a chat request carries them."""
    response_format = chat_response_format(request.text_format)
    if response_format is not None:
        chat["response_format"] = response_format
    if request.tools:
        chat["tools"] = chat_tools(request.tools)
        chat["tool_choice"] = chat_tool_choice(request.tool_choice)
        if request.parallel_tool_calls is not None:
            chat["parallel_tool_calls"] = request.parallel_tool_calls
    elif request.tool_choice not in ("auto", "none"):
        raise unsupported("tool_choice", "tool_choice requires a tool, and 'tools' is empty.")


def chat_response_format(text_format: Item) -> dict[str, Any] | None:
    kind = text_format.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: v for k, v in text_format.items() if k != "type"}
        return {"type": "json_schema", "json_schema": schema}
    return None


def chat_tools(tools: Iterable[Item]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: str | Item) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    return {"type": "function", "function": {"name": choice["name"]}}


def chat_messages(instructions: str | None, items: Iterable[Item]) -> list[dict[str, Any]]:
    """Normalised Responses items (see ``request.normalise_item``) as chat messages."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    # Images a tool returned wait until the run of tool messages ends: a tool
    # message holds text only, and the tool messages must follow their calls.
    pending: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "function_call_output":
            text, others = _tool_output(item["output"])
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
            pending.extend(others)
            continue
        if pending:
            messages.append({"role": "user", "content": pending})
            pending = []
        if kind == "message":
            messages.append(_message(item))
        else:  # function_call
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                # Parallel calls, or text then calls: one assistant turn either way.
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    if pending:
        messages.append({"role": "user", "content": pending})
    return messages


def _message(item: Item) -> dict[str, Any]:
    role = item["role"]
    parts = item["content"]
    if role == "assistant":
        text = "".join(p.get("text") or p.get("refusal") or "" for p in parts)
        return {"role": "assistant", "content": text}
    if role in ("system", "developer"):
        # "developer" is OpenAI's newer name; compatible servers know "system".
        return {"role": "system", "content": "".join(p["text"] for p in parts)}
    chat_parts = [_user_part(p) for p in parts]
    if len(chat_parts) == 1 and chat_parts[0]["type"] == "text":
        return {"role": "user", "content": chat_parts[0]["text"]}
    return {"role": "user", "content": chat_parts}


def _user_part(part: Item) -> dict[str, Any]:
    kind = part["type"]
    if kind == "input_image":
        image: dict[str, Any] = {"url": part["image_url"]}
        if "detail" in part:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file = {"file_data": part["file_data"], "filename": part.get("filename", "document.pdf")}
        return {"type": "file", "file": file}
    return {"type": "text", "text": part["text"]}


def _tool_output(output: str | list[Item]) -> tuple[str, list[dict[str, Any]]]:
    """A function's output as a tool message's text, and the other parts it returned."""
    if isinstance(output, str):
        return output, []
    texts = [p["text"] for p in output if p["type"] in ("input_text", "output_text")]
    others = [_user_part(p) for p in output if p["type"] not in ("input_text", "output_text")]
    return "\n".join(texts), others
