"""Bedrock's translators, behind the ``Translator`` interface (registered in
``ext_proc.translate``): OpenAI chat, Anthropic Messages and Responses clients
served by the Converse API.

Converse answers carry no id and no model, so the request side names both in
the context's ``state``: the provider's model id, a fresh id for the answer,
and (OpenAI) whether the client asked for a usage chunk. A Responses client is
served through Chat Completions on both sides: its request becomes a chat
request, then Converse; Converse's answer a chat completion, then a Response.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from ext_proc.apis import Dialect, WireAPI
from ext_proc.translate.base import TranslationContext
from ext_proc.translate.bedrock import (
    errors,
    request_from_anthropic,
    request_from_openai,
    response_to_anthropic,
    response_to_openai,
    stream_to_anthropic,
    stream_to_openai,
)
from ext_proc.translate.bedrock.converse import ConverseRequest
from ext_proc.translate.responses import (
    request_to_chat,
    response_from_chat,
    stream_from_chat,
)
from ext_proc.translate.responses.request import parse_request
from ext_proc.translate.responses.translators import response_context, start_context

__all__ = ["AnthropicToBedrock", "OpenAIToBedrock", "ResponsesToBedrock"]


def _context(
    client: WireAPI, request: ConverseRequest, *, prefix: str, **extra: Any
) -> TranslationContext:
    state = {"model": request.model_id, "id": prefix + secrets.token_hex(12), **extra}
    return TranslationContext(
        client,
        WireAPI.BEDROCK,
        json.dumps(state, separators=(",", ":")),
        path=request.path,
    )


def _state(context: TranslationContext) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(context.state)
    return state


class OpenAIToBedrock:
    """An OpenAI chat-completions client served by Bedrock's Converse API."""

    client = WireAPI.OPENAI
    provider = WireAPI.BEDROCK

    def request(
        self,
        body: Mapping[str, Any],
        dialect: Dialect,
        history: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[dict[str, Any], TranslationContext]:
        request = request_from_openai.translate_request(body, model_id=str(body["model"]))
        context = _context(self.client, request, prefix="chatcmpl-", usage=request.include_usage)
        return request.body, context

    def response(
        self, body: Mapping[str, Any], context: TranslationContext, *, created: int
    ) -> dict[str, Any]:
        state = _state(context)
        return response_to_openai.translate_response(
            body, model=state["model"], response_id=state["id"], created=created
        )

    def stream(
        self, context: TranslationContext, *, created: int
    ) -> stream_to_openai.StreamTranslator:
        state = _state(context)
        return stream_to_openai.StreamTranslator(
            model=state["model"],
            response_id=state["id"],
            created=created,
            include_usage=state.get("usage") is True,
        )

    def error(self, status: int, body: bytes) -> bytes:
        return errors.translate_error(self.client, status, body)


class AnthropicToBedrock:
    """An Anthropic Messages client served by Bedrock's Converse API."""

    client = WireAPI.ANTHROPIC
    provider = WireAPI.BEDROCK

    def request(
        self,
        body: Mapping[str, Any],
        dialect: Dialect,
        history: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[dict[str, Any], TranslationContext]:
        request = request_from_anthropic.translate_request(body, model_id=str(body["model"]))
        return request.body, _context(self.client, request, prefix="msg_bdrk_")

    def response(
        self, body: Mapping[str, Any], context: TranslationContext, *, created: int
    ) -> dict[str, Any]:
        state = _state(context)
        return response_to_anthropic.translate_response(
            body, model=state["model"], message_id=state["id"]
        )

    def stream(
        self, context: TranslationContext, *, created: int
    ) -> stream_to_anthropic.StreamTranslator:
        state = _state(context)
        return stream_to_anthropic.StreamTranslator(model=state["model"], message_id=state["id"])

    def error(self, status: int, body: bytes) -> bytes:
        return errors.translate_error(self.client, status, body)


class _ResponsesStream:
    """Converse's event stream -> chat chunks -> Responses events, chunk by chunk."""

    __slots__ = ("_chat", "_responses")

    def __init__(self, chat: stream_to_openai.StreamTranslator, responses: Any) -> None:
        self._chat = chat
        self._responses: stream_from_chat.StreamTranslator = responses

    def feed(self, chunk: bytes) -> bytes:
        return self._responses.feed(self._chat.feed(chunk))

    def finish(self) -> bytes:
        return self._responses.feed(self._chat.finish()) + self._responses.finish()

    def output_items(self) -> list[dict[str, Any]]:
        return self._responses.output_items()


class ResponsesToBedrock:
    """A Responses client served by Bedrock, through Chat Completions both ways."""

    client = WireAPI.RESPONSES
    provider = WireAPI.BEDROCK

    def request(
        self,
        body: Mapping[str, Any],
        dialect: Dialect,
        history: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[dict[str, Any], TranslationContext]:
        request = parse_request(body)
        items = [dict(item) for item in history]
        chat = request_to_chat.translate_request(request, items)
        converse = request_from_openai.translate_request(chat, model_id=request.model)
        context = start_context(self.client, self.provider, request, items)
        return converse.body, TranslationContext(
            context.client,
            context.provider,
            context.state,
            conversation=context.conversation,
            path=converse.path,
        )

    def response(
        self, body: Mapping[str, Any], context: TranslationContext, *, created: int
    ) -> dict[str, Any]:
        ctx = response_context(context)
        chat = response_to_openai.translate_response(
            body,
            model=str(ctx.echo.get("model", "")),
            response_id=ctx.response_id,
            created=created,
        )
        return response_from_chat.translate_response(ctx, chat)

    def stream(self, context: TranslationContext, *, created: int) -> _ResponsesStream:
        ctx = response_context(context)
        chat = stream_to_openai.StreamTranslator(
            model=str(ctx.echo.get("model", "")),
            response_id=ctx.response_id,
            created=created,
            include_usage=True,
        )
        return _ResponsesStream(chat, stream_from_chat.StreamTranslator(ctx))

    def error(self, status: int, body: bytes) -> bytes:
        return errors.translate_error(WireAPI.OPENAI, status, body)
