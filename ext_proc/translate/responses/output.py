"""Building blocks of a Response object, shared by the whole-body and stream
translators of both provider directions: output items, usage, status, and the
Response itself.

Output item ids derive from the response id (``msg_<id>_<n>``, ``fc_<id>_<n>``),
so a translation is a pure function of its inputs and a replayed conversation
keeps the ids its client saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.apis import WireAPI
from ext_proc.translate.common import as_dict, error_in_client_shape
from ext_proc.translate.responses.request import Item, ResponseContext

__all__ = [
    "FAILED",
    "Outcome",
    "anthropic_outcome",
    "build_response",
    "chat_outcome",
    "function_call_item",
    "item_id",
    "message_item",
    "refusal_part",
    "text_part",
    "translate_error",
    "usage_from_anthropic",
    "usage_from_chat",
]

Outcome = tuple[str, str | None]
"""``(status, incomplete reason)``, e.g. ``("incomplete", "max_output_tokens")``."""

FAILED: Outcome = ("failed", None)

_CHAT_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_ANTHROPIC_INCOMPLETE = {
    "max_tokens": "max_output_tokens",
    "model_context_window_exceeded": "max_output_tokens",
    "refusal": "content_filter",
}


def item_id(ctx: ResponseContext, kind: str, index: int) -> str:
    suffix = ctx.response_id.removeprefix("resp_")
    return f"{kind}_{suffix}_{index}"


def message_item(item_id: str, parts: list[Item], status: str = "completed") -> Item:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": parts,
    }


def text_part(text: str) -> Item:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(refusal: str) -> Item:
    return {"type": "refusal", "refusal": refusal}


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> Item:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def chat_outcome(finish_reason: object) -> Outcome:
    reason = _CHAT_INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
    return ("incomplete", reason) if reason else ("completed", None)


def anthropic_outcome(stop_reason: object) -> Outcome:
    reason = _ANTHROPIC_INCOMPLETE.get(stop_reason) if isinstance(stop_reason, str) else None
    return ("incomplete", reason) if reason else ("completed", None)


def _count(usage: Mapping[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(inputs: int, cached: int, cache_write: int, outputs: int, reasoning: int) -> Item:
    return {
        "input_tokens": inputs,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": cache_write},
        "output_tokens": outputs,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inputs + outputs,
    }


def usage_from_chat(usage: Mapping[str, Any]) -> Item:
    prompt_details = as_dict(usage.get("prompt_tokens_details"))
    completion_details = as_dict(usage.get("completion_tokens_details"))
    return _usage(
        _count(usage, "prompt_tokens"),
        _count(prompt_details, "cached_tokens"),
        0,
        _count(usage, "completion_tokens"),
        _count(completion_details, "reasoning_tokens"),
    )


def usage_from_anthropic(usage: Mapping[str, Any]) -> Item:
    """Anthropic counts cache reads and writes apart from ``input_tokens``; Responses inside."""
    cached = _count(usage, "cache_read_input_tokens")
    written = _count(usage, "cache_creation_input_tokens")
    inputs = _count(usage, "input_tokens") + cached + written
    return _usage(inputs, cached, written, _count(usage, "output_tokens"), 0)


def build_response(
    ctx: ResponseContext,
    *,
    model: object,
    output: list[Item],
    outcome: Outcome | None,
    usage: Item | None,
    error: Item | None = None,
) -> Item:
    """A Response object; ``outcome=None`` is one still in progress."""
    status, reason = outcome if outcome is not None else ("in_progress", None)
    response: Item = {
        "id": ctx.response_id,
        "object": "response",
        "created_at": ctx.created_at,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": reason} if reason else None,
        "output": output,
        "usage": usage,
        "background": False,
        "truncation": "disabled",
        **ctx.echo,
    }
    # The provider's own name for the model (a dated version) is what answered.
    if isinstance(model, str) and model:
        response["model"] = model
    return response


def translate_error(status: int, body: bytes) -> bytes:
    """An upstream error in the Responses error shape (OpenAI's), its status kept by the caller;
    Envoy's own replies are already in that shape."""
    return error_in_client_shape(WireAPI.OPENAI, status, body)
