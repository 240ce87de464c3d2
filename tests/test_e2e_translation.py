"""End to end, translated: the real openai and anthropic SDKs -> a real Envoy ->
Archway -> fake providers that speak the other API's real wire format, sent
in awkward pieces. Each test checks both ends: what the SDK parsed, and the
exact native request the provider received."""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator

import anthropic
import openai
import pytest
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
    ProcessingResponse,
)

from ext_proc.deploy.bootstrap import TRANSLATION_STAT_PREFIX
from ext_proc.deploy.echo import ReceivedRequest
from ext_proc.server import service as server
from ext_proc.server.routing_stream import RoutingProcessor
from ext_proc.server.translation_stream import TranslationProcessor
from tests.fake_providers import (
    ANTHROPIC_MODEL_VERSION,
    REPLY_TEXT,
    TOOL_ARGUMENTS,
    FakeProvider,
    Reply,
    anthropic_stream,
    openai_stream,
)
from tests.gateway import LOOPBACK_LISTENER, Gateway, start_gateway, stop_gateway

CONFIG = (
    LOOPBACK_LISTENER
    + """\
model_providers:
  - model: openai/gpt-5.2
    base_url: {openai}
    access_key: sk-openai-test
    default: true
  - model: anthropic/claude-sonnet-4-5
    base_url: {anthropic}
    access_key: sk-ant-test
  - model: anthropic/claude-gone
    base_url: http://127.0.0.1:{closed_port}
    access_key: sk-ant-test
  - model: groq/*
    base_url: {groq}/openai/v1
    access_key: gsk-test
archway:
  admin_port: 0
"""
)

PROVIDERS = ("openai", "anthropic", "groq")
TRANSLATE_STATS = f"http.egress_traffic.ext_proc.{TRANSLATION_STAT_PREFIX}."

WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": WEATHER_TOOL_OPENAI["function"]["parameters"],
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    providers = {name: FakeProvider(name).start() for name in PROVIDERS}
    closed = socket.socket()  # bound, never listening: connections are refused
    closed.bind(("127.0.0.1", 0))
    try:
        urls = {name: p.base_url for name, p in providers.items()}
        text = CONFIG.format(closed_port=closed.getsockname()[1], **urls)
        gw = start_gateway(text, tmp_path_factory.mktemp("gw"), providers)
        try:
            yield gw
        finally:
            stop_gateway(gw)
    finally:
        closed.close()
        for provider in providers.values():
            provider.stop()


@pytest.fixture
def gw(gateway: Gateway) -> Gateway:
    gateway.clear()
    return gateway


def openai_client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="client-key", max_retries=0, timeout=10)


def anthropic_client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0, timeout=10)


def provider(gw: Gateway, name: str) -> FakeProvider:
    upstream = gw.upstreams[name]
    assert isinstance(upstream, FakeProvider)
    return upstream


def only_request(gw: Gateway, name: str) -> ReceivedRequest:
    for other in PROVIDERS:
        if other != name:
            assert provider(gw, other).requests == [], f"{other} should have received nothing"
    (request,) = provider(gw, name).requests
    return request


def assert_anthropic_native(request: ReceivedRequest) -> None:
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    # A compressed answer could not be translated, so none is asked for.
    assert "accept-encoding" not in request.headers


def assert_openai_native(request: ReceivedRequest, path: str = "/v1/chat/completions") -> None:
    assert request.path == path
    assert request.headers["authorization"].startswith("Bearer ")
    assert "x-api-key" not in request.headers
    assert not [h for h in request.headers if h.startswith("anthropic-")]
    assert "accept-encoding" not in request.headers


# --- OpenAI SDK -> Anthropic provider ---------------------------------------------


def test_openai_sdk_gets_a_chat_completion_from_anthropic(gw: Gateway) -> None:
    raw = openai_client(gw).chat.completions.with_raw_response.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Order me a coffee."},
        ],
        max_completion_tokens=200,
        temperature=0.3,
        top_p=0.9,
        stop=["\n\nHuman:"],
        user="user-42",
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "claude-sonnet-4-5" + ANTHROPIC_MODEL_VERSION
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == REPLY_TEXT
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (25, 13)
    assert completion.usage.total_tokens == 38
    assert completion.usage.prompt_tokens_details.cached_tokens == 4
    assert raw.headers["content-type"] == "application/json"
    assert int(raw.headers["content-length"]) == len(raw.content)
    assert raw.headers["x-archway-model"] == "anthropic/claude-sonnet-4-5"
    assert "x-archway-translate" not in raw.headers

    request = only_request(gw, "anthropic")
    assert_anthropic_native(request)
    assert request.json() == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 200,
        "system": "Answer in French.",
        "messages": [{"role": "user", "content": "Order me a coffee."}],
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.3,
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
    }


def test_openai_sdk_streams_from_anthropic(gw: Gateway) -> None:
    stream = openai_client(gw).chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[{"role": "user", "content": "Order me a coffee."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY_TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (25, 13)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert {c.id for c in chunks} == {"msg_01XFDUDYJgAACzvnptvVoYEL"}

    request = only_request(gw, "anthropic")
    assert_anthropic_native(request)
    body = request.json()
    assert body["stream"] is True
    assert body["max_tokens"] == 4096  # Anthropic requires one; the client sent none
    assert "stream_options" not in body


def test_openai_sdk_stream_without_include_usage_has_no_usage_chunk(gw: Gateway) -> None:
    stream = openai_client(gw).chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    chunks = list(stream)
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_sdk_tool_use_round_trip_through_anthropic(gw: Gateway) -> None:
    client = openai_client(gw)
    question = {"role": "user", "content": "Weather in Paris?"}
    completion = client.chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[question],
        tools=[WEATHER_TOOL_OPENAI],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check the weather."
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    sent = provider(gw, "anthropic").requests[-1].json()
    assert sent["tools"] == [WEATHER_TOOL_ANTHROPIC]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    # The client sends the call and its result back: Anthropic gets tool_use
    # and tool_result blocks.
    gw.clear()
    client.chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[
            question,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18°C, sunny"},
        ],
        tools=[WEATHER_TOOL_OPENAI],
    )
    request = only_request(gw, "anthropic")
    assert_anthropic_native(request)
    assert request.json()["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check the weather."},
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": "get_weather",
                    "input": TOOL_ARGUMENTS,
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18°C, sunny"}],
        },
    ]


def test_openai_sdk_streams_tool_calls_from_anthropic(gw: Gateway) -> None:
    with openai_client(gw).chat.completions.stream(
        model="anthropic/claude-sonnet-4-5",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL_OPENAI],
    ) as stream:
        deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert len(deltas) >= 3  # the arguments arrived in pieces, as Anthropic sent them
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check the weather."
    (call,) = choice.message.tool_calls
    assert call.id == "toolu_01A09q90qw90lq917835lq9"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    assert only_request(gw, "anthropic").json()["stream"] is True


def test_anthropic_errors_reach_the_openai_sdk_in_its_shape(gw: Gateway) -> None:
    error = {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Number of request tokens exceeded."},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    provider(gw, "anthropic").queue(Reply(429, body=json.dumps(error).encode()))
    with pytest.raises(openai.RateLimitError) as err:
        openai_client(gw).chat.completions.create(
            model="anthropic/claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.status_code == 429
    assert err.value.body == {
        "message": "Number of request tokens exceeded.",
        "type": "invalid_request_error",
        "param": None,
        "code": "rate_limit_error",
    }


def test_anthropic_mid_stream_error_raises_in_the_openai_sdk(gw: Gateway) -> None:
    events = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
        b'"type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],'
        b'"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}'
        b"\n\n"
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )
    provider(gw, "anthropic").queue(Reply(content_type="text/event-stream", body=events))
    stream = openai_client(gw).chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    with pytest.raises(openai.APIError) as err:
        list(stream)
    assert "Overloaded" in err.value.message


def test_unreachable_provider_keeps_the_openai_error_shape(gw: Gateway) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        openai_client(gw).chat.completions.create(
            model="anthropic/claude-gone", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.status_code == 503
    assert err.value.body["code"] == "upstream_unavailable"


def test_the_first_event_reaches_the_client_before_the_stream_ends(gw: Gateway) -> None:
    body = anthropic_stream("claude-sonnet-4-5")
    first_delta_ends = body.index(b"\n\n", body.index(b"text_delta")) + 2
    reply = provider(gw, "anthropic").queue(
        Reply(content_type="text/event-stream", body=body, hold_after=first_delta_ends)
    )
    stream = openai_client(gw).chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    try:
        iterator = iter(stream)
        received = [next(iterator), next(iterator)]
        # The provider is still holding the rest of its stream back.
        assert not reply.resumed.is_set()
        assert received[1].choices[0].delta.content == "Bonjour"
    finally:
        reply.gate.set()
    rest = "".join(c.choices[0].delta.content or "" for c in iterator if c.choices)
    assert "Bonjour" + rest == REPLY_TEXT


# --- Anthropic SDK -> OpenAI-compatible provider -----------------------------------


def test_anthropic_sdk_gets_a_message_from_openai(gw: Gateway) -> None:
    raw = anthropic_client(gw).messages.with_raw_response.create(
        model="openai/gpt-5.2",
        max_tokens=300,
        system="Answer in French.",
        messages=[{"role": "user", "content": "Order me a coffee."}],
        stop_sequences=["END"],
        metadata={"user_id": "user-42"},
        # This SDK version has no keyword for them; the API still takes them.
        extra_body={"temperature": 0.5, "top_k": 40},
    )
    message = raw.parse()
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "gpt-5.2"
    (block,) = message.content
    assert block.type == "text" and block.text == REPLY_TEXT
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 13)
    assert message.usage.cache_read_input_tokens == 4
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-archway-provider"] == "openai"

    request = only_request(gw, "openai")
    assert_openai_native(request)
    assert request.headers["authorization"] == "Bearer sk-openai-test"
    assert request.json() == {
        "model": "gpt-5.2",
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Order me a coffee."},
        ],
        "max_completion_tokens": 300,
        "stop": ["END"],
        "temperature": 0.5,
        "user": "user-42",
    }


def test_anthropic_sdk_streams_from_openai(gw: Gateway) -> None:
    with anthropic_client(gw).messages.stream(
        model="openai/gpt-5.2",
        max_tokens=300,
        messages=[{"role": "user", "content": "Order me a coffee."}],
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == REPLY_TEXT
    assert message.content[0].text == REPLY_TEXT
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 13)

    request = only_request(gw, "openai")
    assert_openai_native(request)
    body = request.json()
    assert body["stream"] is True
    # Anthropic clients always get usage; OpenAI only sends it when asked.
    assert body["stream_options"] == {"include_usage": True}


def test_anthropic_sdk_tool_use_round_trip_through_openai(gw: Gateway) -> None:
    client = anthropic_client(gw)
    question = {"role": "user", "content": "Weather in Paris?"}
    message = client.messages.create(
        model="openai/gpt-5.2",
        max_tokens=300,
        messages=[question],
        tools=[WEATHER_TOOL_ANTHROPIC],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )
    assert message.stop_reason == "tool_use"
    (call,) = message.content
    assert call.type == "tool_use"
    assert call.name == "get_weather"
    assert call.input == TOOL_ARGUMENTS
    sent = provider(gw, "openai").requests[-1].json()
    assert sent["tools"] == [WEATHER_TOOL_OPENAI]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False

    gw.clear()
    client.messages.create(
        model="openai/gpt-5.2",
        max_tokens=300,
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump() for b in message.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "18°C, sunny"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        tools=[WEATHER_TOOL_ANTHROPIC],
    )
    request = only_request(gw, "openai")
    assert_openai_native(request)
    assert request.json()["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": json.dumps(TOOL_ARGUMENTS, separators=(",", ":")),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "18°C, sunny"},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
    ]


def test_anthropic_sdk_streams_tool_use_from_openai(gw: Gateway) -> None:
    with anthropic_client(gw).messages.stream(
        model="openai/gpt-5.2",
        max_tokens=300,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL_ANTHROPIC],
    ) as stream:
        partials = [e for e in stream if e.type == "input_json"]
        message = stream.get_final_message()
    assert len(partials) >= 3
    assert message.stop_reason == "tool_use"
    (call,) = message.content
    assert call.type == "tool_use"
    assert call.id == "call_Dn2RJJSxzDm49vlVTehseJ0k"
    assert call.input == TOOL_ARGUMENTS
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 13)


def test_anthropic_sdk_sees_the_first_words_before_openai_finishes(gw: Gateway) -> None:
    body = openai_stream("gpt-5.2", include_usage=True)
    first_word_ends = body.index(b"\n\n", body.index(b'"Bonjour"')) + 2
    reply = provider(gw, "openai").queue(
        Reply(content_type="text/event-stream", body=body, hold_after=first_word_ends)
    )
    with anthropic_client(gw).messages.stream(
        model="openai/gpt-5.2", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        words = iter(stream.text_stream)
        try:
            assert next(words) == "Bonjour"
            assert not reply.resumed.is_set()
        finally:
            reply.gate.set()
        assert "Bonjour" + "".join(words) == REPLY_TEXT


def test_openai_compatible_providers_get_max_tokens(gw: Gateway) -> None:
    anthropic_client(gw).messages.create(
        model="groq/llama-3.3-70b-versatile",
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
    )
    request = only_request(gw, "groq")
    assert_openai_native(request, path="/openai/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer gsk-test"
    body = request.json()
    assert body["max_tokens"] == 64 and "max_completion_tokens" not in body


def test_openai_errors_reach_the_anthropic_sdk_in_its_shape(gw: Gateway) -> None:
    error = {
        "error": {
            "message": "Incorrect API key provided: sk-opena***test.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    provider(gw, "openai").queue(Reply(401, body=json.dumps(error).encode()))
    with pytest.raises(anthropic.AuthenticationError) as err:
        anthropic_client(gw).messages.create(
            model="openai/gpt-5.2", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.status_code == 401
    assert err.value.body == {
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": "Incorrect API key provided: sk-opena***test.",
        },
    }


def test_a_cut_off_openai_stream_is_an_error_for_the_anthropic_sdk(gw: Gateway) -> None:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-5.2",
        "choices": [{"index": 0, "delta": {"content": "Bonj"}, "finish_reason": None}],
    }
    body = f"data: {json.dumps(chunk)}\n\n".encode()
    provider(gw, "openai").queue(Reply(content_type="text/event-stream", body=body))
    stream = anthropic_client(gw).messages.create(
        model="openai/gpt-5.2",
        max_tokens=8,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    with pytest.raises(anthropic.APIStatusError) as err:
        list(stream)
    assert "ended before the answer did" in str(err.value)


# --- zero cost when no translation is needed ----------------------------------------


def _translate_stats(gw: Gateway) -> dict[str, int]:
    stats = gw.stats(TRANSLATE_STATS)
    return {
        name.removeprefix(TRANSLATE_STATS): stats.get(name, 0)
        for name in (TRANSLATE_STATS + "streams_started", TRANSLATE_STATS + "stream_msgs_sent")
    }


@pytest.fixture
def phases(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Messages the ext_proc server handles from now on, by phase."""
    seen: Counter[str] = Counter()

    class CountingRouting(RoutingProcessor):
        __slots__ = ()

        async def handle(self, request: ProcessingRequest) -> ProcessingResponse:
            seen[request.WhichOneof("request") or ""] += 1
            return await super().handle(request)

    class CountingTranslation(TranslationProcessor):
        __slots__ = ()

        async def handle(self, request: ProcessingRequest) -> ProcessingResponse:
            seen[request.WhichOneof("request") or ""] += 1
            return await super().handle(request)

    monkeypatch.setattr(server, "RoutingProcessor", CountingRouting)
    monkeypatch.setattr(server, "TranslationProcessor", CountingTranslation)
    return seen


def test_same_api_requests_never_reach_the_translation_filter(
    gw: Gateway, phases: Counter[str]
) -> None:
    before = _translate_stats(gw)
    oai = openai_client(gw)
    raw = oai.chat.completions.with_raw_response.create(
        model="openai/gpt-5.2", messages=[{"role": "user", "content": "hi"}]
    )
    # Untouched: the provider's own length, not a re-encoded body.
    assert int(raw.headers["content-length"]) == len(raw.content)
    assert raw.parse().choices[0].message.content == REPLY_TEXT
    list(
        oai.chat.completions.create(
            model="openai/gpt-5.2", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    ant = anthropic_client(gw)
    ant.messages.create(
        model="anthropic/claude-sonnet-4-5",
        max_tokens=8,
        messages=[{"role": "user", "content": "x"}],
    )
    with ant.messages.stream(
        model="anthropic/claude-sonnet-4-5",
        max_tokens=8,
        messages=[{"role": "user", "content": "x"}],
    ) as stream:
        assert "".join(stream.text_stream) == REPLY_TEXT
    # Four requests, one message each (the body), none of them about the response.
    assert phases == {"request_body": 4}
    assert _translate_stats(gw) == before

    # A translated request opens one more stream: response headers, then its body.
    ant.messages.create(
        model="openai/gpt-5.2", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    )
    assert phases == {
        "request_body": 5,
        "response_headers": 1,
        "response_body": 1,
    }
    after = _translate_stats(gw)
    assert after["streams_started"] == before["streams_started"] + 1
    assert after["stream_msgs_sent"] == before["stream_msgs_sent"] + 2


def test_events_split_across_chunks_are_reassembled(gw: Gateway, phases: Counter[str]) -> None:
    """The fake provider's pauses make Envoy hand the stream over in many small
    pieces, cut mid-event; the SDK still gets every event whole."""
    with anthropic_client(gw).messages.stream(
        model="openai/gpt-5.2", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        assert "".join(stream.text_stream) == REPLY_TEXT
    # role, one chunk per word, finish, usage, [DONE]
    openai_events = len(REPLY_TEXT.split(" ")) + 4
    assert phases["response_body"] > openai_events
