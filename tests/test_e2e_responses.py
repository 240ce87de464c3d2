"""End to end, the Responses API: the real openai SDK's ``client.responses`` ->
a real Envoy -> Archway -> fake providers. OpenAI serves Responses natively
(the body goes through untouched); groq (Chat Completions only) and Anthropic
get translated requests. Conversation state (``previous_response_id``) is
checked on memory and on a real PostgreSQL.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ext_proc.deploy.echo import ReceivedRequest
from tests.fake_providers import (
    ANTHROPIC_MODEL_VERSION,
    NATIVE_RESPONSE_ID,
    REPLY_TEXT,
    TOOL_ARGUMENTS,
    FakeProvider,
    Reply,
)
from tests.gateway import LOOPBACK_LISTENER, Gateway, start_gateway, stop_gateway
from tests.postgres_server import running_postgres

CONFIG = (
    LOOPBACK_LISTENER
    + """\
model_providers:
  - model: openai/gpt-5.2
    base_url: {openai}
    access_key: sk-openai-test
  - model: anthropic/claude-sonnet-4-5
    base_url: {anthropic}
    access_key: sk-ant-test
  - model: groq/llama-3.3-70b
    base_url: {groq}/openai/v1
    access_key: gsk-test
    default: true
model_aliases:
  fast:
    target: groq/llama-3.3-70b
archway:
  admin_port: 0
{state}
"""
)

PROVIDERS = ("openai", "anthropic", "groq")
MODELS = {
    "openai": "openai/gpt-5.2",
    "anthropic": "anthropic/claude-sonnet-4-5",
    "groq": "groq/llama-3.3-70b",
}
UPSTREAM_PATHS = {
    "openai": "/v1/responses",
    "anthropic": "/v1/messages",
    "groq": "/openai/v1/chat/completions",
}
TRANSLATED = ("anthropic", "groq")

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


def _gateway(tmp: Any, state: str) -> Iterator[Gateway]:
    providers = {name: FakeProvider(name).start() for name in PROVIDERS}
    try:
        urls = {name: p.base_url for name, p in providers.items()}
        gw = start_gateway(CONFIG.format(state=state, **urls), tmp, providers)
        try:
            yield gw
        finally:
            stop_gateway(gw)
    finally:
        for provider in providers.values():
            provider.stop()


@pytest.fixture(scope="module")
def memory_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from _gateway(tmp_path_factory.mktemp("gw"), "state_storage:\n  type: memory\n")


@pytest.fixture(scope="module")
def postgres_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # No skip: a machine without PostgreSQL fails here, saying how to install it.
    with running_postgres() as dsn:
        state = f"state_storage:\n  type: postgres\n  connection_string: {dsn}\n"
        yield from _gateway(tmp_path_factory.mktemp("gw-pg"), state)


@pytest.fixture
def gw(memory_gateway: Gateway) -> Gateway:
    memory_gateway.clear()
    return memory_gateway


@pytest.fixture(params=["memory", "postgres"])
def state_gw(request: pytest.FixtureRequest) -> Gateway:
    gateway: Gateway = request.getfixturevalue(f"{request.param}_gateway")
    gateway.clear()
    return gateway


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="client-key", max_retries=0, timeout=10)


def requests_to(gw: Gateway, name: str) -> list[ReceivedRequest]:
    for other in PROVIDERS:
        if other != name:
            assert gw.upstreams[other].requests == [], f"{other} should have received nothing"
    return gw.upstreams[name].requests


def only_request(gw: Gateway, name: str) -> ReceivedRequest:
    (request,) = requests_to(gw, name)
    return request


def assert_upstream(request: ReceivedRequest, name: str) -> None:
    assert request.path == UPSTREAM_PATHS[name]
    if name == "anthropic":
        assert request.headers["x-api-key"] == "sk-ant-test"
        assert "authorization" not in request.headers
    else:
        key = "sk-openai-test" if name == "openai" else "gsk-test"
        assert request.headers["authorization"] == f"Bearer {key}"


def answer_text(response: Any) -> str:
    return "".join(
        part.text
        for item in response.output
        if item.type == "message"
        for part in item.content
        if part.type == "output_text"
    )


@pytest.mark.parametrize("name", PROVIDERS)
def test_create_is_routed_and_answered(gw: Gateway, name: str) -> None:
    with client(gw) as sdk:
        raw = sdk.responses.with_raw_response.create(
            model=MODELS[name], input="Say hello in French.", instructions="Be brief."
        )
    response = raw.parse()
    assert answer_text(response) == REPLY_TEXT
    assert response.status == "completed"
    assert response.usage is not None and response.usage.total_tokens > 0
    assert raw.headers["x-archway-model"] == MODELS[name]
    request = only_request(gw, name)
    assert_upstream(request, name)
    body = request.json()
    if name == "openai":
        # Native: only the model is rewritten.
        assert body == {
            "model": "gpt-5.2",
            "input": "Say hello in French.",
            "instructions": "Be brief.",
        }
        assert response.id == NATIVE_RESPONSE_ID
        return
    assert response.id.startswith("resp_")
    assert response.instructions == "Be brief."
    if name == "groq":
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello in French."},
        ]
        assert body["model"] == "llama-3.3-70b"
    else:
        assert body["system"] == "Be brief."
        assert body["model"] == "claude-sonnet-4-5"
        assert response.model == "claude-sonnet-4-5" + ANTHROPIC_MODEL_VERSION


def test_alias_bare_id_and_open_model_route_like_chat(gw: Gateway) -> None:
    with client(gw) as sdk:
        for model, name in (("fast", "groq"), ("claude-sonnet-4-5", "anthropic"), ("", "groq")):
            raw = sdk.responses.with_raw_response.create(model=model, input="Hi")
            assert answer_text(raw.parse()) == REPLY_TEXT
            assert raw.headers["x-archway-provider"] == name
            assert_upstream(only_request(gw, name), name)
            gw.clear()


@pytest.mark.parametrize("name", PROVIDERS)
def test_stream_delivers_the_event_sequence(gw: Gateway, name: str) -> None:
    with client(gw) as sdk:
        stream = sdk.responses.create(model=MODELS[name], input="Hi", stream=True)
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == REPLY_TEXT
    assert answer_text(events[-1].response) == REPLY_TEXT
    request = only_request(gw, name)
    assert_upstream(request, name)
    assert request.json()["stream"] is True


@pytest.mark.parametrize("name", PROVIDERS)
def test_function_tool_then_its_result(gw: Gateway, name: str) -> None:
    with client(gw) as sdk:
        first = sdk.responses.create(model=MODELS[name], input="Weather in Paris?", tools=[WEATHER])
        (call,) = [item for item in first.output if item.type == "function_call"]
        assert call.name == "get_weather"
        assert json.loads(call.arguments) == TOOL_ARGUMENTS
        gw.clear()
        # The client carries the conversation itself, as the Agents SDK does.
        follow_up = [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C, sunny"},
        ]
        second = sdk.responses.create(model=MODELS[name], input=follow_up, tools=[WEATHER])
    assert second.status == "completed"
    body = only_request(gw, name).json()
    if name == "openai":
        assert body["input"] == follow_up
    elif name == "groq":
        tool_message = body["messages"][-1]
        assert tool_message == {
            "role": "tool",
            "tool_call_id": call.call_id,
            "content": "18C, sunny",
        }
        assert body["messages"][-2]["tool_calls"][0]["id"] == call.call_id
    else:
        result = body["messages"][-1]["content"][0]
        assert result["type"] == "tool_result"
        assert result["tool_use_id"] == call.call_id


def _texts(body: dict[str, Any], name: str) -> list[tuple[str, str]]:
    """(role, text) of every message the provider received."""
    out = []
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, str):
            out.append((message["role"], content))
            continue
        for part in content or []:
            if part.get("type") == "text":
                out.append((message["role"], part["text"]))
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("name", TRANSLATED)
def test_previous_response_id_prepends_the_stored_conversation(
    state_gw: Gateway, name: str, stream: bool
) -> None:
    with client(state_gw) as sdk:
        if stream:
            with sdk.responses.stream(model=MODELS[name], input="First question") as events:
                first = events.get_final_response()
        else:
            first = sdk.responses.create(model=MODELS[name], input="First question")
        second = sdk.responses.create(
            model=MODELS[name], input="Second question", previous_response_id=first.id
        )
        third = sdk.responses.create(
            model=MODELS[name], input="Third question", previous_response_id=second.id
        )
    assert third.previous_response_id == second.id
    assert len({first.id, second.id, third.id}) == 3
    bodies = [r.json() for r in requests_to(state_gw, name)]
    assert len(bodies) == 3
    assert _texts(bodies[2], name) == [
        ("user", "First question"),
        ("assistant", REPLY_TEXT),
        ("user", "Second question"),
        ("assistant", REPLY_TEXT),
        ("user", "Third question"),
    ]


@pytest.mark.parametrize("name", TRANSLATED)
def test_unknown_or_unstored_previous_response_is_a_404(state_gw: Gateway, name: str) -> None:
    with client(state_gw) as sdk:
        with pytest.raises(openai.NotFoundError) as error:
            sdk.responses.create(
                model=MODELS[name], input="Hi", previous_response_id="resp_never_stored"
            )
        assert error.value.code == "previous_response_not_found"
        assert "resp_never_stored" in error.value.message
        unstored = sdk.responses.create(model=MODELS[name], input="Hi", store=False)
        with pytest.raises(openai.NotFoundError):
            sdk.responses.create(model=MODELS[name], input="Hi", previous_response_id=unstored.id)
    assert len(state_gw.upstreams[name].requests) == 1


def test_native_previous_response_id_is_the_provider_s(gw: Gateway) -> None:
    with client(gw) as sdk:
        sdk.responses.create(model=MODELS["openai"], input="Hi", previous_response_id="resp_x")
    assert only_request(gw, "openai").json()["previous_response_id"] == "resp_x"


@pytest.mark.parametrize("name", PROVIDERS)
def test_provider_errors_come_back_in_the_responses_shape(gw: Gateway, name: str) -> None:
    if name == "anthropic":
        body = b'{"type":"error","error":{"type":"rate_limit_error","message":"Slow down."}}'
    else:
        body = b'{"error":{"message":"Slow down.","type":"rate_limit_error","code":null}}'
    gw.upstreams[name].queue(Reply(429, body=body))
    with client(gw) as sdk, pytest.raises(openai.RateLimitError) as error:
        sdk.responses.create(model=MODELS[name], input="Hi")
    assert error.value.status_code == 429
    assert "Slow down." in error.value.message


def test_what_cannot_be_honoured_is_a_400_naming_it(gw: Gateway) -> None:
    with client(gw) as sdk, pytest.raises(openai.BadRequestError) as error:
        sdk.responses.create(
            model=MODELS["groq"], input="Hi", tools=[{"type": "web_search_preview"}]
        )
    assert error.value.status_code == 400
    assert "web_search" in error.value.message
    assert requests_to(gw, "groq") == []


@pytest.mark.parametrize("random_text", [False, True], ids=["compressible", "incompressible"])
def test_many_large_tools_are_echoed_back(gw: Gateway, random_text: bool) -> None:
    # The Response repeats the request's tools; an agent's toolbox can be larger
    # than every header Envoy allows a request, so the context travels compressed,
    # and past that the echo keeps each tool's type and name.
    def description() -> str:
        return secrets.token_hex(800) if random_text else "A long description. " * 80

    tools = [{**WEATHER, "name": f"tool_{n}", "description": description()} for n in range(60)]
    with client(gw) as sdk:
        response = sdk.responses.create(model=MODELS["groq"], input="Hi", tools=tools)
    assert [item.type for item in response.output] == ["function_call"]
    assert [tool.name for tool in response.tools] == [f"tool_{n}" for n in range(60)]
    assert len(only_request(gw, "groq").json()["tools"]) == 60
