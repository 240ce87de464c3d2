"""An OpenAI ``chat.completion`` as the Anthropic ``message`` its client expects."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ext_proc.translate.common import as_dict, as_list

__all__ = ["STOP_REASONS", "anthropic_usage", "stop_reason", "translate_response"]

STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""OpenAI ``finish_reason`` -> Anthropic ``stop_reason``; anything else is ``end_turn``."""


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
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": anthropic_usage(as_dict(completion.get("usage"))),
    }


def stop_reason(finish_reason: object) -> str:
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
