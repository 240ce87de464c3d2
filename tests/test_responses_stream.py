"""Chat-completions and Anthropic SSE as Responses SSE: the exact event sequence
the openai SDK accumulates, whatever pieces the upstream bytes arrive in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ext_proc.translate.responses import stream_from_anthropic, stream_from_chat
from ext_proc.translate.responses.request import ResponseContext, parse_request
from tests.fake_providers import REPLY_TEXT, TOOL_ARGUMENTS, anthropic_stream, openai_stream
from tests.responses_checks import SDKStream, sdk_stream

Translator = stream_from_chat.StreamTranslator | stream_from_anthropic.StreamTranslator

TEXT_EVENTS = (
    ["response.created", "response.in_progress"]
    + ["response.output_item.added", "response.content_part.added"]
    + ["response.output_text.delta"] * len(REPLY_TEXT.split(" "))
    + ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
)
CALL_EVENTS = [
    "response.output_item.added",
    *["response.function_call_arguments.delta"] * 3,
    "response.function_call_arguments.done",
    "response.output_item.done",
]


def context() -> ResponseContext:
    request = parse_request({"model": "m", "input": "Weather?", "stream": True})
    return request.context("resp_s1", 1741570283)


def make(kind: str) -> Translator:
    if kind == "chat":
        return stream_from_chat.StreamTranslator(context())
    return stream_from_anthropic.StreamTranslator(context())


def run(translator: Translator, body: bytes, piece: int = 0) -> bytes:
    if piece <= 0:
        return translator.feed(body) + translator.finish()
    out = b"".join(translator.feed(body[i : i + piece]) for i in range(0, len(body), piece))
    return out + translator.finish()


def sse(events: list[dict[str, Any]], *, named: bool) -> bytes:
    lines = []
    for event in events:
        data = json.dumps(event)
        lines.append(f"event: {event['type']}\ndata: {data}\n\n" if named else f"data: {data}\n\n")
    return "".join(lines).encode()


@pytest.mark.parametrize("kind", ["chat", "anthropic"])
@pytest.mark.parametrize("piece", [0, 1, 3, 17])
def test_text_stream(kind: str, piece: int) -> None:
    body = openai_stream("m", include_usage=True) if kind == "chat" else anthropic_stream("m")
    translator = make(kind)
    stream = sdk_stream(run(translator, body, piece))
    assert stream.types == [*TEXT_EVENTS, "response.completed"]
    assert "".join(stream.text_deltas()) == REPLY_TEXT
    response = stream.response
    assert response.id == "resp_s1" and response.status == "completed"
    assert response.output_text == REPLY_TEXT
    assert response.usage is not None and response.usage.total_tokens == 38
    done = stream.payloads[-2]["item"]
    assert done["status"] == "completed" and done["id"] == "msg_s1_0"
    # What conversation state keeps is exactly the Response's output.
    assert translator.output_items() == stream.payloads[-1]["response"]["output"]


@pytest.mark.parametrize("piece", [0, 2, 5])
def test_chat_tool_call_stream(piece: int) -> None:
    body = openai_stream("m", tool="get_weather", include_usage=True)
    stream = sdk_stream(run(make("chat"), body, piece))
    assert stream.types[2:] == [
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 4,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    (call,) = stream.response.output
    assert call.type == "function_call"
    assert call.call_id == "call_Dn2RJJSxzDm49vlVTehseJ0k" and call.name == "get_weather"
    assert json.loads(call.arguments) == TOOL_ARGUMENTS
    assert stream.payloads[-3]["name"] == "get_weather"


@pytest.mark.parametrize("piece", [0, 4])
def test_anthropic_text_then_tool_call_stream(piece: int) -> None:
    body = anthropic_stream("m", tool="get_weather")
    stream = sdk_stream(run(make("anthropic"), body, piece))
    text_events = (
        ["response.output_item.added", "response.content_part.added"]
        + ["response.output_text.delta"] * 5
        + ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    )
    assert stream.types[2:] == [*text_events, *CALL_EVENTS, "response.completed"]
    message, call = stream.response.output
    assert message.type == "message" and call.type == "function_call"
    assert stream.response.output_text == "Let me check the weather."
    assert json.loads(call.arguments) == TOOL_ARGUMENTS
    assert (call.id, call.call_id) == ("fc_s1_1", "toolu_01A09q90qw90lq917835lq9")


def test_chat_length_ends_incomplete() -> None:
    body = openai_stream("m", include_usage=True).replace(
        b'"finish_reason": "stop"', b'"finish_reason": "length"'
    )
    stream = sdk_stream(run(make("chat"), body))
    assert stream.types[-1] == "response.incomplete"
    details = stream.response.incomplete_details
    assert details is not None and details.reason == "max_output_tokens"
    assert stream.payloads[-2]["item"]["status"] == "incomplete"
    assert stream.response.output_text == REPLY_TEXT


def test_anthropic_max_tokens_ends_incomplete() -> None:
    body = anthropic_stream("m").replace(
        b'"stop_reason": "end_turn"', b'"stop_reason": "max_tokens"'
    )
    stream = sdk_stream(run(make("anthropic"), body))
    assert stream.types[-1] == "response.incomplete"
    assert stream.response.status == "incomplete"


def test_chat_refusal_streams_as_a_refusal_part() -> None:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "refusal": "I can"}}]},
        {**base, "choices": [{"index": 0, "delta": {"refusal": "not."}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
    stream = sdk_stream(run(make("chat"), body))
    assert "response.refusal.delta" in stream.types and "response.refusal.done" in stream.types
    (message,) = stream.response.output
    assert message.content[0].type == "refusal"
    assert message.content[0].refusal == "I cannot."


def test_interleaved_parallel_chat_tool_calls() -> None:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def call(index: int, arguments: str, **first: str) -> dict[str, Any]:
        delta = {"tool_calls": [{"index": index, **first, "function": {"arguments": arguments}}]}
        if first:
            delta["tool_calls"][0]["function"]["name"] = "get_weather"
        return {**base, "choices": [{"index": 0, "delta": delta}]}

    chunks = [
        call(0, '{"location":', id="call_a"),
        call(1, '{"location":', id="call_b"),
        call(0, '"Paris"}'),
        call(1, '"Lyon"}'),
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    body = sse(chunks, named=False) + b"data: [DONE]\n\n"
    stream = sdk_stream(run(make("chat"), body))
    first, second = stream.response.output
    assert (first.call_id, json.loads(first.arguments)) == ("call_a", {"location": "Paris"})
    assert (second.call_id, json.loads(second.arguments)) == ("call_b", {"location": "Lyon"})


@pytest.mark.parametrize("kind", ["chat", "anthropic"])
def test_a_cut_off_stream_fails_rather_than_completes(kind: str) -> None:
    body = openai_stream("m", include_usage=True) if kind == "chat" else anthropic_stream("m")
    # Everything up to the end of the fourth event: text, no finish.
    cut = body[: [i for i in range(len(body)) if body.startswith(b"\n\n", i)][3] + 2]
    translator = make(kind)
    stream = sdk_stream(run(translator, cut))
    assert stream.types[-1] == "response.failed"
    error = stream.response.error
    assert error is not None and error.code == "server_error"
    assert "ended before the answer" in error.message
    # What was said so far is kept, marked incomplete.
    assert stream.payloads[-2]["item"]["status"] == "incomplete"
    assert stream.response.output[0].type == "message"


def test_anthropic_error_event_fails_the_response() -> None:
    body = anthropic_stream("m")
    head = body[: body.index(b"event: content_block_delta")]
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    tail = b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
    stream = sdk_stream(run(make("anthropic"), head + tail + body))
    assert stream.types[-1] == "response.failed"
    assert stream.response.error is not None and stream.response.error.message == "Overloaded"


def test_chat_error_chunk_fails_the_response() -> None:
    body = b'data: {"error": {"message": "model crashed", "code": 500}}\n\n'
    stream = sdk_stream(run(make("chat"), body))
    assert stream.types == ["response.created", "response.in_progress", "response.failed"]
    assert stream.response.error is not None and stream.response.error.message == "model crashed"


def test_nothing_after_the_terminal_event() -> None:
    translator = make("chat")
    out = run(translator, openai_stream("m", include_usage=True))
    assert translator.feed(b'data: {"choices":[{"delta":{"content":"more"}}]}\n\n') == b""
    assert translator.finish() == b""
    assert sdk_stream(out).types[-1] == "response.completed"


def test_stream_events_carry_the_request_settings() -> None:
    request = parse_request(
        {"model": "m", "input": "Hi", "stream": True, "metadata": {"run": "42"}, "top_p": 0.5}
    )
    translator = stream_from_chat.StreamTranslator(request.context("resp_z", 5))
    stream: SDKStream = sdk_stream(run(translator, openai_stream("m-1", include_usage=True)))
    created = stream.payloads[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["metadata"] == {"run": "42"} and created["top_p"] == 0.5
    assert stream.response.model == "m-1"
    assert stream.response.created_at == 5
