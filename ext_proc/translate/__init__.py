"""Translation between the OpenAI and Anthropic wire APIs.

One module per direction, named after who talks to whom:
``openai_to_anthropic`` serves an OpenAI client from an Anthropic provider,
``anthropic_to_openai`` the reverse. This package picks the direction; the
processor calls it. Pure: no protobuf, no I/O.

The request is translated in the routing filter's body phase. The response is
translated by a second ext_proc stream (see ``ext_proc.deploy.bootstrap``), which
learns the direction from ``TranslationContext.header_value()`` echoed onto
the response as ``TRANSLATE_HEADER``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ext_proc.routing.catalog import WireAPI
from ext_proc.translate import anthropic_to_openai, openai_to_anthropic
from ext_proc.translate.common import dumps

__all__ = [
    "StreamTranslator",
    "TranslationContext",
    "stream_translator",
    "translate_error",
    "translate_request",
    "translate_response",
]

_INCLUDE_USAGE = "include-usage"


class StreamTranslator(Protocol):
    def feed(self, chunk: bytes) -> bytes:
        """The client's bytes for one upstream body chunk (possibly empty)."""
        ...

    def finish(self) -> bytes:
        """The client's last bytes, at the end of the upstream stream."""
        ...


@dataclass(frozen=True, slots=True)
class TranslationContext:
    """What the response side needs to know about a translated request."""

    client: WireAPI
    provider: WireAPI
    include_usage: bool = False
    """An OpenAI client asked for ``stream_options.include_usage``."""

    def header_value(self) -> str:
        value = f"{self.client.value}-to-{self.provider.value}"
        return f"{value};{_INCLUDE_USAGE}" if self.include_usage else value

    @staticmethod
    def from_header(value: str | None) -> TranslationContext | None:
        """The context a ``header_value`` encodes, or ``None`` for anything else."""
        if value is None:
            return None
        return _CONTEXTS.get(value)


_CONTEXTS: dict[str, TranslationContext] = {
    ctx.header_value(): ctx
    for client, provider in (
        (WireAPI.OPENAI, WireAPI.ANTHROPIC),
        (WireAPI.ANTHROPIC, WireAPI.OPENAI),
    )
    for ctx in (
        TranslationContext(client, provider),
        TranslationContext(client, provider, include_usage=True),
    )
}


def translate_request(
    client: WireAPI,
    provider: WireAPI,
    body: Mapping[str, Any],
    *,
    max_tokens_field: str = "max_tokens",
) -> tuple[dict[str, Any], TranslationContext]:
    """The provider's request for a client's, and the context its response needs.

    Raises ``GatewayError`` (400) for fields the provider's API cannot honour.
    """
    if client is WireAPI.OPENAI and provider is WireAPI.ANTHROPIC:
        include_usage = bool(
            body.get("stream") is True
            and isinstance(body.get("stream_options"), dict)
            and body["stream_options"].get("include_usage") is True
        )
        translated = openai_to_anthropic.translate_request(body)
        return translated, TranslationContext(client, provider, include_usage)
    if client is WireAPI.ANTHROPIC and provider is WireAPI.OPENAI:
        translated = anthropic_to_openai.translate_request(body, max_tokens_field=max_tokens_field)
        return translated, TranslationContext(client, provider)
    raise ValueError(f"no translation from {client} to {provider}")


def translate_response(ctx: TranslationContext, body: bytes, *, created: int) -> bytes:
    """A whole successful (2xx) JSON response body, in the client's API.

    A body that is not a JSON object goes back unchanged: there is nothing
    meaningful to translate, and the client is better served seeing it.
    """
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(parsed, dict):
        return body
    if ctx.client is WireAPI.OPENAI:
        return dumps(openai_to_anthropic.translate_response(parsed, created=created)).encode()
    return dumps(anthropic_to_openai.translate_response(parsed)).encode()


def translate_error(ctx: TranslationContext, status: int, body: bytes) -> bytes:
    """An error response body (any status >= 300), in the client's error shape."""
    if ctx.client is WireAPI.OPENAI:
        return openai_to_anthropic.translate_error(status, body)
    return anthropic_to_openai.translate_error(status, body)


def stream_translator(ctx: TranslationContext, *, created: int) -> StreamTranslator:
    if ctx.client is WireAPI.OPENAI:
        return openai_to_anthropic.StreamTranslator(
            created=created, include_usage=ctx.include_usage
        )
    return anthropic_to_openai.StreamTranslator()
