"""The real openai SDK reads what the Responses translators write, over loopback
HTTP: ``responses.create``, ``responses.stream`` (the SDK's accumulator and its
final parse, tools included) and errors.

A fake provider serves the translated bytes as the gateway will send them; the
gateway wiring itself is tested where it lands.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ext_proc.translate.responses import (
    response_from_anthropic,
    response_from_chat,
    stream_from_anthropic,
    stream_from_chat,
)
from ext_proc.translate.responses.output import translate_error
from ext_proc.translate.responses.request import ResponseContext, parse_request
from tests.fake_providers import (
    REPLY_TEXT,
    TOOL_ARGUMENTS,
    FakeProvider,
    Reply,
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_stream,
)

WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["location", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeProvider]:
    with FakeProvider("responses") as provider:
        yield provider


@pytest.fixture
def client(gateway: FakeProvider) -> Iterator[openai.OpenAI]:
    gateway.clear()
    with openai.OpenAI(
        base_url=gateway.base_url + "/v1", api_key="sk-test", max_retries=0, timeout=10
    ) as sdk:
        yield sdk


def context(**request: Any) -> ResponseContext:
    return parse_request({"model": "m", **request}).context("resp_sdk1", 1741570283)


def serve_stream(gateway: FakeProvider, translator: Any, upstream: bytes) -> None:
    body = translator.feed(upstream) + translator.finish()
    gateway.queue(Reply(200, "text/event-stream", body))


@pytest.mark.parametrize("provider", ["chat", "anthropic"])
def test_create_answers_a_response(
    gateway: FakeProvider, client: openai.OpenAI, provider: str
) -> None:
    ctx = context(input="Hi")
    if provider == "chat":
        response = response_from_chat.translate_response(ctx, openai_completion("m"))
    else:
        response = response_from_anthropic.translate_response(ctx, anthropic_message("m"))
    gateway.queue(Reply(200, body=json.dumps(response).encode()))
    answer = client.responses.create(model="m", input="Hi")
    assert answer.id == "resp_sdk1"
    assert answer.output_text == REPLY_TEXT
    assert gateway.requests[-1].path == "/v1/responses"


@pytest.mark.parametrize("provider", ["chat", "anthropic"])
def test_stream_helper_accumulates_and_parses_tool_calls(
    gateway: FakeProvider, client: openai.OpenAI, provider: str
) -> None:
    ctx = context(input="Weather in Paris?", tools=[WEATHER], stream=True)
    if provider == "chat":
        upstream = openai_stream("m", tool="get_weather", include_usage=True)
        translator: Any = stream_from_chat.StreamTranslator(ctx)
    else:
        upstream = anthropic_stream("m", tool="get_weather")
        translator = stream_from_anthropic.StreamTranslator(ctx)
    serve_stream(gateway, translator, upstream)
    with client.responses.stream(
        model="m",
        input="Weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
    ) as stream:
        snapshots = [
            event.snapshot
            for event in stream
            if event.type == "response.function_call_arguments.delta"
        ]
        final = stream.get_final_response()
    assert json.loads(snapshots[-1]) == TOOL_ARGUMENTS
    call = final.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    # The SDK parsed the strict tool's arguments itself.
    assert call.parsed_arguments == TOOL_ARGUMENTS
    assert final.status == "completed"
    assert final.usage is not None and final.usage.total_tokens == 38


@pytest.mark.parametrize("provider", ["chat", "anthropic"])
def test_create_stream_iterates_text_events(
    gateway: FakeProvider, client: openai.OpenAI, provider: str
) -> None:
    ctx = context(input="Hi", stream=True)
    if provider == "chat":
        upstream = openai_stream("m", include_usage=True)
        translator: Any = stream_from_chat.StreamTranslator(ctx)
    else:
        upstream = anthropic_stream("m")
        translator = stream_from_anthropic.StreamTranslator(ctx)
    serve_stream(gateway, translator, upstream)
    text = ""
    completed = None
    for event in client.responses.create(model="m", input="Hi", stream=True):
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            completed = event.response
    assert text == REPLY_TEXT
    assert completed is not None and completed.output_text == REPLY_TEXT


def test_a_failed_stream_reaches_the_sdk_as_response_failed(
    gateway: FakeProvider, client: openai.OpenAI
) -> None:
    upstream = anthropic_stream("m")
    cut = upstream[: upstream.index(b"event: content_block_stop")]
    serve_stream(gateway, stream_from_anthropic.StreamTranslator(context(input="Hi")), cut)
    events = list(client.responses.create(model="m", input="Hi", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None
    assert events[-1].response.output_text == REPLY_TEXT


def test_provider_errors_raise_the_sdks_error_with_the_message(
    gateway: FakeProvider, client: openai.OpenAI
) -> None:
    upstream = b'{"type":"error","error":{"type":"rate_limit_error","message":"Slow down."}}'
    gateway.queue(Reply(429, body=translate_error(429, upstream)))
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="m", input="Hi")
    assert caught.value.status_code == 429
    assert caught.value.body == {
        "message": "Slow down.",
        "type": "invalid_request_error",
        "param": None,
        "code": "rate_limit_error",
    }
