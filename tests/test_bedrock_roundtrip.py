"""The real OpenAI and Anthropic SDKs against the fake Bedrock runtime, over
loopback HTTP, through the translators: request out, JSON and event streams back.

``TranslatingProxy`` (tests/fake_bedrock.py) does what the gateway will: it
translates, forwards with the Bedrock API key as a bearer token, and translates
the answer back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.fake_bedrock import (
    REASONING_TEXT,
    REPLY_TEXT,
    TOOL_ARGUMENTS,
    TOOL_USE_ID,
    FakeBedrock,
    TranslatingProxy,
    converse_events,
    error_reply,
    event_frame,
    exception_frame,
    stream_reply,
)

MODEL = "us.amazon.nova-pro-v1:0"
API_KEY = "bedrock-api-key-ABSKQmVkcm9j"
TIMEOUT_S = 10.0
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def bedrock() -> Iterator[FakeBedrock]:
    with FakeBedrock() as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(bedrock: FakeBedrock) -> Iterator[TranslatingProxy]:
    with TranslatingProxy(bedrock.port, API_KEY) as server:
        yield server


@pytest.fixture
def fake(bedrock: FakeBedrock) -> FakeBedrock:
    bedrock.clear()
    return bedrock


@pytest.fixture
def openai_client(proxy: TranslatingProxy) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=f"{proxy.base_url}/v1", api_key="client-key", max_retries=0, timeout=TIMEOUT_S
    )
    yield client
    client.close()


@pytest.fixture
def anthropic_client(proxy: TranslatingProxy) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        base_url=proxy.base_url, api_key="client-key", max_retries=0, timeout=TIMEOUT_S
    )
    yield client
    client.close()


# --- OpenAI --------------------------------------------------------------------------


def test_openai_completion(fake: FakeBedrock, openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=50,
    )
    assert completion.choices[0].message.content == REPLY_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL
    assert completion.usage is not None and completion.usage.total_tokens == 38
    (request,) = fake.requests
    assert request.path == "/model/us.amazon.nova-pro-v1%3A0/converse"
    assert fake.model_ids() == [MODEL]
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.json() == {
        "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 50},
    }
    assert completion.id.startswith("chatcmpl-")


def test_openai_tool_call_stream_with_usage(
    fake: FakeBedrock, openai_client: openai.OpenAI
) -> None:
    stream = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    arguments = ""
    tool_ids = []
    finish = None
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                if call.id:
                    tool_ids.append(call.id)
                arguments += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    assert text == "Let me check the weather."
    assert tool_ids == [TOOL_USE_ID]
    assert json.loads(arguments) == TOOL_ARGUMENTS
    assert finish == "tool_calls"
    assert usage is not None and usage.prompt_tokens == 25
    (request,) = fake.requests
    assert request.path.endswith("/converse-stream")
    assert request.json()["toolConfig"]["tools"][0]["toolSpec"]["name"] == "weather"


def test_openai_sdk_sees_bedrock_errors(fake: FakeBedrock, openai_client: openai.OpenAI) -> None:
    fake.queue(error_reply(429, "ThrottlingException", "Too many requests."))
    with pytest.raises(openai.RateLimitError) as caught:
        openai_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.message.endswith("Too many requests.")
    assert caught.value.code == "ThrottlingException"


def test_openai_sdk_sees_refusals(fake: FakeBedrock, openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=3
        )
    assert caught.value.param == "n"
    assert fake.requests == []


def test_openai_sdk_sees_a_stream_that_fails(
    fake: FakeBedrock, openai_client: openai.OpenAI
) -> None:
    events = converse_events({})
    frames = [event_frame(k, p) for k, p in events[:3]]
    fake.queue(stream_reply([*frames, exception_frame("throttlingException", "Slow down.")]))
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="Slow down"):
        for _ in stream:
            pass


# --- Anthropic -----------------------------------------------------------------------


def test_anthropic_message_with_thinking(
    fake: FakeBedrock, anthropic_client: anthropic.Anthropic
) -> None:
    message = anthropic_client.messages.create(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Bonjour"}],
    )
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == REASONING_TEXT  # type: ignore[union-attr]
    assert message.content[1].text == REPLY_TEXT  # type: ignore[union-attr]
    assert message.usage.cache_read_input_tokens == 4
    (request,) = fake.requests
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.json()["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 1024}
    }


def test_anthropic_tool_stream(fake: FakeBedrock, anthropic_client: anthropic.Anthropic) -> None:
    with anthropic_client.messages.stream(
        model=MODEL,
        max_tokens=100,
        tools=[{"name": "weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == "Let me check the weather."
    assert message.stop_reason == "tool_use"
    tool = message.content[-1]
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == (TOOL_USE_ID, "weather", TOOL_ARGUMENTS)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 13)
    (request,) = fake.requests
    assert request.json()["toolConfig"]["toolChoice"] == {"any": {}}


def test_anthropic_sdk_sees_bedrock_errors(
    fake: FakeBedrock, anthropic_client: anthropic.Anthropic
) -> None:
    fake.queue(error_reply(400, "ValidationException", "The model is not available."))
    with pytest.raises(anthropic.BadRequestError) as caught:
        anthropic_client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "The model is not available."},
    }


def test_anthropic_sdk_sees_a_stream_that_fails(
    fake: FakeBedrock, anthropic_client: anthropic.Anthropic
) -> None:
    events = converse_events({})
    frames = [event_frame(k, p) for k, p in events[:4]]
    fake.queue(stream_reply([*frames, exception_frame("serviceUnavailableException", "Busy.")]))
    with (
        pytest.raises(anthropic.APIStatusError, match="Busy"),
        anthropic_client.messages.stream(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        for _ in stream:
            pass
