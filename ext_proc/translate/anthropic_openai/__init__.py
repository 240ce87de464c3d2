"""An Anthropic Messages client served by an OpenAI-compatible provider.

``request``: the client's body for ``/v1/chat/completions``, in the provider's
dialect; ``response`` and ``stream``: the completion as an Anthropic
``message`` and Anthropic SSE events; errors in Anthropic's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.apis import Dialect, WireAPI
from ext_proc.translate.anthropic_openai.request import translate_request
from ext_proc.translate.anthropic_openai.response import translate_response
from ext_proc.translate.anthropic_openai.stream import StreamTranslator
from ext_proc.translate.base import TranslationContext
from ext_proc.translate.common import error_in_client_shape

__all__ = ["AnthropicToOpenAI"]


class AnthropicToOpenAI:
    client = WireAPI.ANTHROPIC
    provider = WireAPI.OPENAI

    def request(
        self, body: Mapping[str, Any], dialect: Dialect
    ) -> tuple[dict[str, Any], TranslationContext]:
        return translate_request(body, dialect), TranslationContext(self.client, self.provider)

    def response(
        self, body: Mapping[str, Any], context: TranslationContext, *, created: int
    ) -> dict[str, Any]:
        return translate_response(body)

    def stream(self, context: TranslationContext, *, created: int) -> StreamTranslator:
        return StreamTranslator()

    def error(self, status: int, body: bytes) -> bytes:
        return error_in_client_shape(self.client, status, body)
