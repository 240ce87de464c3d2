"""An Anthropic ``message`` as the OpenAI ``chat.completion`` its client expects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.translate.common import as_dict, chat_completion, chat_usage, text_and_tool_calls

__all__ = ["FINISH_REASONS", "finish_reason", "openai_usage", "translate_response"]

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic ``stop_reason`` -> OpenAI ``finish_reason``; anything else is ``stop``."""


def translate_response(message: Mapping[str, Any], *, created: int) -> dict[str, Any]:
    """The ``chat.completion`` for an Anthropic ``message``."""
    texts, tool_calls = text_and_tool_calls(message.get("content"))
    return chat_completion(
        response_id=message.get("id"),
        created=created,
        model=message.get("model"),
        texts=texts,
        tool_calls=tool_calls,
        finish_reason=finish_reason(message.get("stop_reason")),
        usage=openai_usage(as_dict(message.get("usage"))),
    )


def finish_reason(stop_reason: object) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _count(usage: Mapping[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) else 0


def openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI counts cached prompt tokens inside ``prompt_tokens``; Anthropic apart."""
    cached = _count(usage, "cache_read_input_tokens")
    prompt = _count(usage, "input_tokens") + _count(usage, "cache_creation_input_tokens") + cached
    return chat_usage(prompt, _count(usage, "output_tokens"), cached)
