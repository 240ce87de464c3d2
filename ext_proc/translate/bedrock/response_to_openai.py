"""A Converse answer as an OpenAI ``chat.completion``.

Converse answers carry neither an id nor the model, so the caller supplies both
(the request's model, and an id made from Bedrock's ``x-amzn-RequestId``).
Reasoning blocks have no place in a chat completion and are left out, as the
Anthropic translator leaves out thinking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.translate.bedrock.converse import finish_reason, openai_usage, tool_input_json
from ext_proc.translate.common import as_dict, as_list, chat_completion, dumps

__all__ = ["translate_response"]


def translate_response(
    answer: Mapping[str, Any], *, model: str, response_id: str, created: int
) -> dict[str, Any]:
    message = as_dict(as_dict(answer.get("output")).get("message"))
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in as_list(message.get("content")):
        block = as_dict(block)
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif "toolUse" in block:
            use = as_dict(block["toolUse"])
            tool_calls.append(
                {
                    "id": use.get("toolUseId"),
                    "type": "function",
                    "function": {
                        "name": use.get("name"),
                        "arguments": dumps(tool_input_json(use.get("input", {}))),
                    },
                }
            )
    return chat_completion(
        response_id=response_id,
        created=created,
        model=model,
        texts=texts,
        tool_calls=tool_calls,
        finish_reason=finish_reason(answer.get("stopReason")),
        usage=openai_usage(answer.get("usage")),
    )
