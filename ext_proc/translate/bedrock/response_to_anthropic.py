"""A Converse answer as an Anthropic ``message``.

Converse answers carry neither an id nor the model; the caller supplies both.
Reasoning comes back as ``thinking`` (signature kept) or ``redacted_thinking``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.translate.bedrock.converse import (
    anthropic_usage,
    matched_stop_sequence,
    stop_reason,
    tool_input_json,
)
from ext_proc.translate.common import as_dict, as_list

__all__ = ["translate_response"]


def translate_response(answer: Mapping[str, Any], *, model: str, message_id: str) -> dict[str, Any]:
    message = as_dict(as_dict(answer.get("output")).get("message"))
    content: list[dict[str, Any]] = []
    for block in as_list(message.get("content")):
        block = as_dict(block)
        converted = _block(block)
        if converted is not None:
            content.append(converted)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(answer.get("stopReason")),
        "stop_sequence": matched_stop_sequence(answer.get("additionalModelResponseFields")),
        "usage": anthropic_usage(answer.get("usage")),
    }


def _block(block: dict[str, Any]) -> dict[str, Any] | None:
    if isinstance(block.get("text"), str):
        return {"type": "text", "text": block["text"]}
    if "toolUse" in block:
        use = as_dict(block["toolUse"])
        return {
            "type": "tool_use",
            "id": use.get("toolUseId"),
            "name": use.get("name"),
            "input": tool_input_json(use.get("input", {})),
        }
    if "reasoningContent" in block:
        reasoning = as_dict(block["reasoningContent"])
        if "redactedContent" in reasoning:
            return {"type": "redacted_thinking", "data": reasoning["redactedContent"]}
        text = as_dict(reasoning.get("reasoningText"))
        return {
            "type": "thinking",
            "thinking": text.get("text", ""),
            "signature": text.get("signature", ""),
        }
    # Citations, guard content and other blocks have no Anthropic message form here.
    return None
