"""A Chat Completions answer (``chat.completion``) as a Response object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.translate.common import as_dict, as_list
from ext_proc.translate.responses.output import (
    build_response,
    chat_outcome,
    function_call_item,
    item_id,
    message_item,
    refusal_part,
    text_part,
    usage_from_chat,
)
from ext_proc.translate.responses.request import Item, ResponseContext

__all__ = ["translate_response"]


def translate_response(ctx: ResponseContext, completion: Mapping[str, Any]) -> Item:
    """The Response for a chat completion: its text (and refusal) as one message item,
    then one ``function_call`` item per tool call."""
    choice = as_dict(next(iter(as_list(completion.get("choices"))), None))
    reply = as_dict(choice.get("message"))
    output: list[Item] = []
    parts: list[Item] = []
    text = reply.get("content")
    if isinstance(text, list):
        text = "".join(str(as_dict(p).get("text", "")) for p in text)
    if isinstance(text, str) and text:
        parts.append(text_part(text))
    refusal = reply.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append(refusal_part(refusal))
    calls = as_list(reply.get("tool_calls"))
    if parts or not calls:
        output.append(message_item(item_id(ctx, "msg", 0), parts or [text_part("")]))
    for call in calls:
        call = as_dict(call)
        function = as_dict(call.get("function"))
        arguments = function.get("arguments")
        output.append(
            function_call_item(
                item_id(ctx, "fc", len(output)),
                str(call.get("id") or f"call_{len(output)}"),
                str(function.get("name") or ""),
                arguments if isinstance(arguments, str) else "{}",
            )
        )
    return build_response(
        ctx,
        model=completion.get("model"),
        output=output,
        outcome=chat_outcome(choice.get("finish_reason")),
        usage=usage_from_chat(as_dict(completion.get("usage"))),
    )
