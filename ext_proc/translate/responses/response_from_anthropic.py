"""An Anthropic ``message`` as a Response object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.translate.common import as_dict, as_list, dumps
from ext_proc.translate.responses.output import (
    anthropic_outcome,
    build_response,
    function_call_item,
    item_id,
    message_item,
    text_part,
    usage_from_anthropic,
)
from ext_proc.translate.responses.request import Item, ResponseContext

__all__ = ["translate_response"]


def translate_response(ctx: ResponseContext, message: Mapping[str, Any]) -> Item:
    """The Response for a Messages answer, its content blocks in order: each run of
    text blocks one message item, each ``tool_use`` a ``function_call`` item.
    Thinking blocks are the model's own and are not returned."""
    output: list[Item] = []
    texts: list[str] = []

    def end_text() -> None:
        if texts:
            message_id = item_id(ctx, "msg", len(output))
            output.append(message_item(message_id, [text_part("".join(texts))]))
            texts.clear()

    for block in as_list(message.get("content")):
        block = as_dict(block)
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            end_text()
            output.append(
                function_call_item(
                    item_id(ctx, "fc", len(output)),
                    str(block.get("id") or ""),
                    str(block.get("name") or ""),
                    dumps(block.get("input") or {}),
                )
            )
    end_text()
    if not output:
        output.append(message_item(item_id(ctx, "msg", 0), [text_part("")]))
    return build_response(
        ctx,
        model=message.get("model"),
        output=output,
        outcome=anthropic_outcome(message.get("stop_reason")),
        usage=usage_from_anthropic(as_dict(message.get("usage"))),
    )
