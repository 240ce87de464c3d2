"""An OpenAI chat-completions client served by an Anthropic Messages provider.

``request``: the client's body for ``/v1/messages``; ``response`` and ``stream``:
Anthropic's answer as a ``chat.completion`` and ``chat.completion.chunk``
events; errors in OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.apis import Dialect, WireAPI
from ext_proc.translate.base import TranslationContext
from ext_proc.translate.common import error_in_client_shape
from ext_proc.translate.openai_anthropic.request import translate_request, wants_stream_usage
from ext_proc.translate.openai_anthropic.response import translate_response
from ext_proc.translate.openai_anthropic.stream import StreamTranslator

__all__ = ["INCLUDE_USAGE", "OpenAIToAnthropic"]

INCLUDE_USAGE = "include-usage"
"""The context's state when the client asked for a usage chunk at the end of its stream."""


class OpenAIToAnthropic:
    client = WireAPI.OPENAI
    provider = WireAPI.ANTHROPIC

    def request(
        self, body: Mapping[str, Any], dialect: Dialect
    ) -> tuple[dict[str, Any], TranslationContext]:
        state = INCLUDE_USAGE if wants_stream_usage(body) else ""
        context = TranslationContext(self.client, self.provider, state)
        return translate_request(body), context

    def response(
        self, body: Mapping[str, Any], context: TranslationContext, *, created: int
    ) -> dict[str, Any]:
        return translate_response(body, created=created)

    def stream(self, context: TranslationContext, *, created: int) -> StreamTranslator:
        return StreamTranslator(created=created, include_usage=context.state == INCLUDE_USAGE)

    def error(self, status: int, body: bytes) -> bytes:
        return error_in_client_shape(self.client, status, body)
