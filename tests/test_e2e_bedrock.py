"""End to end, Amazon Bedrock: the real openai and anthropic SDKs -> a real Envoy ->
Archway -> a fake Bedrock runtime speaking Converse (JSON, and event-stream
frames with their CRCs, cut across frame boundaries). Each test checks both
ends: what the SDK parsed, and the Converse request Bedrock received."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import openai
import pytest

from ext_proc.deploy.echo import ReceivedRequest
from tests.fake_bedrock import REPLY_TEXT, TOOL_ARGUMENTS, TOOL_USE_ID, FakeBedrock, error_reply
from tests.gateway import LOOPBACK_LISTENER, Gateway, start_gateway, stop_gateway

MODEL_ID = "us.amazon.nova-pro-v1:0"
MODEL = f"amazon_bedrock/{MODEL_ID}"
API_KEY = "bedrock-api-key-ABSKtest"

CONFIG = (
    LOOPBACK_LISTENER
    + f"""\
model_providers:
  - model: {MODEL}
    base_url: {{bedrock}}
    access_key: {API_KEY}
    default: true
archway:
  admin_port: 0
state_storage:
  type: memory
"""
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with FakeBedrock() as fake:
        gw = start_gateway(
            CONFIG.format(bedrock=fake.base_url), tmp_path_factory.mktemp("gw"), {"bedrock": fake}
        )
        try:
            yield gw
        finally:
            stop_gateway(gw)


@pytest.fixture
def gw(gateway: Gateway) -> Gateway:
    gateway.clear()
    return gateway


def fake(gw: Gateway) -> FakeBedrock:
    upstream = gw.upstreams["bedrock"]
    assert isinstance(upstream, FakeBedrock)
    return upstream


def only_request(gw: Gateway) -> ReceivedRequest:
    (request,) = fake(gw).requests
    return request


def assert_converse(request: ReceivedRequest, *, stream: bool) -> dict[str, object]:
    action = "converse-stream" if stream else "converse"
    assert request.path == f"/model/us.amazon.nova-pro-v1%3A0/{action}"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert "x-api-key" not in request.headers
    body = request.json()
    assert "model" not in body and "stream" not in body
    return body


def openai_client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="client-key", max_retries=0, timeout=10)


def anthropic_client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0, timeout=10)


def test_chat_completion(gw: Gateway) -> None:
    with openai_client(gw) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            max_tokens=64,
        )
    completion = raw.parse()
    assert completion.choices[0].message.content == REPLY_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 13
    assert raw.headers["x-archway-provider"] == "amazon_bedrock"
    body = assert_converse(only_request(gw), stream=False)
    assert body["system"] == [{"text": "Be brief."}]
    assert body["messages"] == [{"role": "user", "content": [{"text": "Hi"}]}]
    assert body["inferenceConfig"] == {"maxTokens": 64}


def test_chat_stream_with_a_tool(gw: Gateway) -> None:
    with openai_client(gw) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Weather in Paris?"}],
                tools=[WEATHER],  # type: ignore[list-item]
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta]
    pieces = [call for group in calls if group for call in group]
    assert pieces[0].id == TOOL_USE_ID and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces)
    assert json.loads(arguments) == TOOL_ARGUMENTS
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 13
    body = assert_converse(only_request(gw), stream=True)
    assert body["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"  # type: ignore[index]


def test_messages(gw: Gateway) -> None:
    with anthropic_client(gw) as sdk:
        message = sdk.messages.create(
            model=MODEL,
            max_tokens=64,
            system="Be brief.",
            messages=[{"role": "user", "content": "Hi"}],
        )
    assert message.content[0].type == "text" and message.content[0].text == REPLY_TEXT
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 13
    body = assert_converse(only_request(gw), stream=False)
    assert body["system"] == [{"text": "Be brief."}]


def test_messages_stream(gw: Gateway) -> None:
    with (
        anthropic_client(gw) as sdk,
        sdk.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY_TEXT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 13
    assert_converse(only_request(gw), stream=True)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_responses_with_previous_response_id(gw: Gateway, stream: bool) -> None:
    with openai_client(gw) as sdk:
        if stream:
            with sdk.responses.stream(model=MODEL, input="First question") as events:
                first = events.get_final_response()
        else:
            first = sdk.responses.create(model=MODEL, input="First question")
        assert first.output_text == REPLY_TEXT
        second = sdk.responses.create(
            model=MODEL, input="Second question", previous_response_id=first.id
        )
    assert second.output_text == REPLY_TEXT
    first_request, second_request = fake(gw).requests
    assert_converse(first_request, stream=stream)
    body = assert_converse(second_request, stream=False)
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "First question"}]},
        {"role": "assistant", "content": [{"text": REPLY_TEXT}]},
        {"role": "user", "content": [{"text": "Second question"}]},
    ]


def test_bedrock_errors_reach_each_client_in_its_shape(gw: Gateway) -> None:
    fake(gw).queue(error_reply(429, "ThrottlingException", "Too many requests, slow down."))
    with openai_client(gw) as sdk, pytest.raises(openai.RateLimitError) as openai_error:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert "slow down" in openai_error.value.message
    fake(gw).queue(error_reply(429, "ThrottlingException", "Too many requests, slow down."))
    with anthropic_client(gw) as client, pytest.raises(anthropic.RateLimitError) as error:
        client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert "slow down" in str(error.value)
