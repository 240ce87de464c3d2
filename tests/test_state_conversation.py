"""previous_response_id end to end through the pure pieces: a turn's input and
output are stored, the next turn gets them prepended, for both provider APIs
and both stores. (The gateway wiring calls exactly these, in this order.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from ext_proc.errors import GatewayError
from ext_proc.state import ConversationStore, StateStorageConfig, conversation, open_store
from ext_proc.translate.responses import (
    request_to_anthropic,
    request_to_chat,
    response_from_anthropic,
    response_from_chat,
    stream_from_anthropic,
    stream_from_chat,
)
from ext_proc.translate.responses.request import new_response_id, parse_request
from tests.fake_providers import (
    REPLY_TEXT,
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_stream,
)
from tests.postgres_server import running_postgres

WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
TTL_S = 3600.0


@pytest.fixture(scope="module", params=["memory", "postgres"])
def storage(request: pytest.FixtureRequest) -> Iterator[StateStorageConfig]:
    if request.param == "memory":
        yield StateStorageConfig("memory")
        return
    with running_postgres() as dsn:
        yield StateStorageConfig("postgres", dsn)


async def turn(
    store: ConversationStore, provider: str, body: dict[str, Any], *, stream: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One Responses turn as the gateway runs it: ``(provider request, output items)``."""
    request = parse_request({**body, "stream": stream})
    history = await store.get(request.previous_response_id) if request.previous_response_id else []
    ctx = request.context(new_response_id(), 1741570283)
    tool = "get_weather" if request.tools else None
    translator: Any
    if provider == "chat":
        upstream = request_to_chat.translate_request(request, history)
        if stream:
            translator = stream_from_chat.StreamTranslator(ctx)
            translator.feed(openai_stream("m", tool=tool, include_usage=True))
            translator.finish()
            output = translator.output_items()
        else:
            answer = openai_completion("m", tool=tool)
            output = response_from_chat.translate_response(ctx, answer)["output"]
    else:
        upstream = request_to_anthropic.translate_request(request, history)
        if stream:
            translator = stream_from_anthropic.StreamTranslator(ctx)
            translator.feed(anthropic_stream("m", tool=tool))
            translator.finish()
            output = translator.output_items()
        else:
            output = response_from_anthropic.translate_response(
                ctx, anthropic_message("m", tool=tool)
            )["output"]
    if request.store:
        await store.put(ctx.response_id, conversation(history, request.items, output), TTL_S)
    return upstream, {"id": ctx.response_id, "output": output}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("provider", ["chat", "anthropic"])
def test_three_turns_with_a_tool_call(
    storage: StateStorageConfig, provider: str, stream: bool
) -> None:
    async def scenario() -> dict[str, Any]:
        store = await open_store(storage)
        try:
            _, first = await turn(
                store, provider, {"model": "m", "input": "My name is Ada."}, stream=stream
            )
            _, second = await turn(
                store,
                provider,
                {
                    "model": "m",
                    "previous_response_id": first["id"],
                    "input": "Weather in Paris?",
                    "tools": [WEATHER],
                },
                stream=stream,
            )
            call = second["output"][-1]
            assert call["type"] == "function_call"
            upstream, _ = await turn(
                store,
                provider,
                {
                    "model": "m",
                    "previous_response_id": second["id"],
                    "instructions": "Only this turn's instructions apply.",
                    "input": [
                        {
                            "type": "function_call_output",
                            "call_id": call["call_id"],
                            "output": "18C",
                        }
                    ],
                    "tools": [WEATHER],
                },
                stream=stream,
            )
            return upstream
        finally:
            await store.close()

    upstream = asyncio.run(scenario())
    if provider == "chat":
        messages = upstream["messages"]
        assert [m["role"] for m in messages] == [
            "system",
            "user",
            "assistant",
            "user",
            "assistant",
            "tool",
        ]
        assert messages[0]["content"] == "Only this turn's instructions apply."
        assert messages[1]["content"] == "My name is Ada."
        assert messages[2]["content"] == REPLY_TEXT
        assert messages[5]["tool_call_id"] == messages[4]["tool_calls"][0]["id"]
    else:
        assert upstream["system"] == "Only this turn's instructions apply."
        messages = upstream["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
        assert messages[1]["content"] == [{"type": "text", "text": REPLY_TEXT}]
        tool_use = messages[3]["content"][-1]
        assert tool_use["type"] == "tool_use"
        assert messages[4]["content"] == [
            {"type": "tool_result", "tool_use_id": tool_use["id"], "content": "18C"}
        ]


def test_store_false_keeps_nothing_and_an_unknown_id_is_404(
    storage: StateStorageConfig,
) -> None:
    async def scenario() -> GatewayError:
        store = await open_store(storage)
        try:
            _, first = await turn(
                store, "chat", {"model": "m", "input": "Hi", "store": False}, stream=False
            )
            with pytest.raises(GatewayError) as caught:
                await turn(
                    store,
                    "chat",
                    {"model": "m", "previous_response_id": first["id"], "input": "Again"},
                    stream=False,
                )
            return caught.value
        finally:
            await store.close()

    error = asyncio.run(scenario())
    assert error.status == 404
    assert error.param == "previous_response_id"
