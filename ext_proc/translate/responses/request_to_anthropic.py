"""A Responses request as an Anthropic Messages request.

The items become chat messages first (``request_to_chat``), and the existing
chat -> Messages translation does the rest: system lifting, alternating turns,
tool results, images and documents, ``tool_choice`` and parallel calls. What
only this direction cannot honour is refused here first, in the Responses
request's own terms, so the client's 400 names a field it sent.

``text.format`` json_schema becomes Anthropic's ``output_config.format``
(structured outputs, the same schema); ``json_object`` has no Anthropic
equivalent and is a 400 asking for a schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ext_proc.errors import GatewayError
from ext_proc.translate.common import unsupported
from ext_proc.translate.openai_anthropic.request import translate_request as chat_to_messages
from ext_proc.translate.responses.request import Item, ResponsesRequest
from ext_proc.translate.responses.request_to_chat import (
    add_format_and_tools,
    chat_messages,
)

__all__ = ["translate_request"]


def translate_request(request: ResponsesRequest, history: Sequence[Item] = ()) -> dict[str, Any]:
    """The Messages request for ``request``, after the stored ``history`` of its previous turns."""
    _refuse(request)
    chat: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(request.instructions, [*history, *request.items]),
    }
    if request.max_output_tokens is not None:
        chat["max_completion_tokens"] = request.max_output_tokens
    for name in ("temperature", "top_p", "user"):
        value = getattr(request, name)
        if value is not None:
            chat[name] = value
    add_format_and_tools(chat, request)
    if request.stream:
        chat["stream"] = True
    try:
        return chat_to_messages(chat)
    except GatewayError as error:
        # Its messages[i] are not the client's: the client sent 'input'.
        if error.param is not None and error.param.startswith("messages"):
            error.param = "input"
        raise


def _refuse(request: ResponsesRequest) -> None:
    if request.text_format.get("type") == "json_object":
        raise unsupported(
            "text.format",
            "text.format json_object has no Anthropic equivalent; send a json_schema format.",
        )
    if request.reasoning_effort not in (None, "none"):
        raise unsupported(
            "reasoning.effort",
            "reasoning.effort is not translated for Anthropic models; leave it unset.",
        )
    if request.verbosity not in (None, "medium"):
        message = "text.verbosity is not translated for Anthropic models; leave it unset."
        raise unsupported("text.verbosity", message)
