"""The Responses API's translators: one per provider API, behind the ``Translator``
interface (registered in ``ext_proc.translate``).

The request side gives the response an id and a ``ResponseContext``, which
travels in the context's ``state`` as JSON; the stored conversation a request
continues comes in as ``history``, and the conversation to keep (when the
client asked for ``store``) goes back in ``TranslationContext.conversation``.
"""

from __future__ import annotations

import base64
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from ext_proc.apis import Dialect, WireAPI
from ext_proc.translate.base import TranslationContext
from ext_proc.translate.responses import (
    request_to_anthropic,
    request_to_chat,
    response_from_anthropic,
    response_from_chat,
    stream_from_anthropic,
    stream_from_chat,
)
from ext_proc.translate.responses.output import translate_error
from ext_proc.translate.responses.request import (
    ResponseContext,
    ResponsesRequest,
    new_response_id,
    parse_request,
)

__all__ = [
    "ResponsesToAnthropic",
    "ResponsesToChat",
    "response_context",
    "start_context",
    "stored_response_id",
]


_COMPRESS_OVER = 2048
"""A context longer than this travels zlib-compressed, base64url-encoded, after ``z``
(JSON never starts with one): the Response repeats the request's tools and
instructions, and an agent's can run to tens of KiB, against Envoy's 60 KiB
for all of a request's headers."""
_MAX_STATE = 32 * 1024
"""Past this, even compressed, the echoed tools keep only their type and name."""


def _encode(ctx: ResponseContext) -> str:
    text = ctx.to_json()
    if len(text) <= _COMPRESS_OVER:
        return text
    packed = "z" + base64.urlsafe_b64encode(zlib.compress(text.encode(), 6)).decode()
    if len(packed) <= _MAX_STATE:
        return packed
    tools = [{"type": t.get("type"), "name": t.get("name")} for t in ctx.echo.get("tools", [])]
    slim = ResponseContext(ctx.response_id, ctx.created_at, {**ctx.echo, "tools": tools})
    return "z" + base64.urlsafe_b64encode(zlib.compress(slim.to_json().encode(), 6)).decode()


def response_context(context: TranslationContext) -> ResponseContext:
    state = context.state
    if state.startswith("z"):
        state = zlib.decompress(base64.urlsafe_b64decode(state[1:])).decode()
    return ResponseContext.from_json(state)


def stored_response_id(context: TranslationContext) -> str | None:
    """The response id to keep the conversation under, when the client asked to store it."""
    ctx = response_context(context)
    return ctx.response_id if ctx.echo.get("store") is not False else None


def start_context(
    client: WireAPI, provider: WireAPI, request: ResponsesRequest, history: Sequence[Any]
) -> TranslationContext:
    """A new response's id and context, with the conversation to keep when stored."""
    ctx = request.context(new_response_id(), int(time.time()))
    keep = (*history, *request.items) if request.store else None
    return TranslationContext(client, provider, _encode(ctx), conversation=keep)


class ResponsesToChat:
    """A Responses client served by a Chat Completions provider."""

    client = WireAPI.RESPONSES
    provider = WireAPI.OPENAI

    def request(
        self,
        body: Mapping[str, Any],
        dialect: Dialect,
        history: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[dict[str, Any], TranslationContext]:
        request = parse_request(body)
        items = [dict(item) for item in history]
        translated = request_to_chat.translate_request(
            request, items, max_tokens_field=dialect.max_tokens_field
        )
        return translated, start_context(self.client, self.provider, request, items)

    def response(
        self, body: Mapping[str, Any], context: TranslationContext, *, created: int
    ) -> dict[str, Any]:
        return response_from_chat.translate_response(response_context(context), body)

    def stream(
        self, context: TranslationContext, *, created: int
    ) -> stream_from_chat.StreamTranslator:
        return stream_from_chat.StreamTranslator(response_context(context))

    def error(self, status: int, body: bytes) -> bytes:
        return translate_error(status, body)


class ResponsesToAnthropic:
    """A Responses client served by an Anthropic Messages provider."""

    client = WireAPI.RESPONSES
    provider = WireAPI.ANTHROPIC

    def request(
        self,
        body: Mapping[str, Any],
        dialect: Dialect,
        history: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[dict[str, Any], TranslationContext]:
        request = parse_request(body)
        items = [dict(item) for item in history]
        translated = request_to_anthropic.translate_request(request, items)
        return translated, start_context(self.client, self.provider, request, items)

    def response(
        self, body: Mapping[str, Any], context: TranslationContext, *, created: int
    ) -> dict[str, Any]:
        return response_from_anthropic.translate_response(response_context(context), body)

    def stream(
        self, context: TranslationContext, *, created: int
    ) -> stream_from_anthropic.StreamTranslator:
        return stream_from_anthropic.StreamTranslator(response_context(context))

    def error(self, status: int, body: bytes) -> bytes:
        return translate_error(status, body)
