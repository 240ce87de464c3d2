"""ConverseStream frames as OpenAI and Anthropic SSE, fed in awkward pieces,
each event checked with the SDKs' own types; failures end the stream clearly."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
from anthropic.types import ErrorResponse, RawMessageStreamEvent
from openai.types.chat import ChatCompletionChunk
from pydantic import TypeAdapter

from ext_proc.translate.bedrock import stream_to_anthropic, stream_to_openai
from ext_proc.translate.sse import SSEDecoder, SSEEvent
from tests.fake_bedrock import (
    REASONING_SIGNATURE,
    REASONING_TEXT,
    REPLY_TEXT,
    TOOL_ARGUMENTS,
    TOOL_USE_ID,
    converse_events,
    event_frame,
    exception_frame,
)

MODEL = "us.amazon.nova-pro-v1:0"
TOOLS_REQUEST = {"toolConfig": {"tools": [{"toolSpec": {"name": "weather"}}]}}
THINKING_REQUEST = {"additionalModelRequestFields": {"thinking": {"type": "enabled"}}}
ANTHROPIC_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def frames(request: dict[str, Any]) -> bytes:
    return b"".join(event_frame(kind, payload) for kind, payload in converse_events(request))


def pieces(data: bytes, sizes: Iterable[int] = (1, 3, 7, 2, 19, 5)) -> list[bytes]:
    out: list[bytes] = []
    sizes = list(sizes)
    start = 0
    i = 0
    while start < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[start : start + size])
        start += size
        i += 1
    return out


def run(translator: Any, data: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces(data):
        events += decoder.feed(translator.feed(piece))
    events += decoder.feed(translator.finish())
    events += decoder.flush()
    return events


def openai_stream(data: bytes, *, include_usage: bool = False) -> list[SSEEvent]:
    translator = stream_to_openai.StreamTranslator(
        model=MODEL, response_id="chatcmpl-1", created=1_750_000_000, include_usage=include_usage
    )
    return run(translator, data)


def anthropic_stream(data: bytes) -> list[tuple[str | None, Any]]:
    translator = stream_to_anthropic.StreamTranslator(model=MODEL, message_id="msg_1")
    out = []
    for event in run(translator, data):
        payload = json.loads(event.data)
        assert payload["type"] == event.event
        out.append((event.event, payload))
    return out


def chunks(events: list[SSEEvent]) -> list[ChatCompletionChunk]:
    assert events[-1].data == "[DONE]"
    return [ChatCompletionChunk.model_validate_json(e.data) for e in events[:-1]]


# --- OpenAI --------------------------------------------------------------------------


def test_text_stream_for_openai() -> None:
    parsed = chunks(openai_stream(frames({})))
    assert {c.id for c in parsed} == {"chatcmpl-1"}
    assert {c.model for c in parsed} == {MODEL}
    assert parsed[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    assert text == REPLY_TEXT
    assert [c.choices[0].finish_reason for c in parsed][-1] == "stop"
    # Without include_usage, no usage chunk.
    assert all(c.usage is None and c.choices for c in parsed)


def test_tool_stream_for_openai_with_usage() -> None:
    parsed = chunks(openai_stream(frames(TOOLS_REQUEST), include_usage=True))
    final = parsed[-1]
    assert final.choices == []
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (25, 13)
    body = parsed[:-1]
    assert body[-1].choices[0].finish_reason == "tool_calls"
    calls = [tc for c in body for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].id == TOOL_USE_ID
    assert calls[0].function is not None and calls[0].function.name == "weather"
    assert {tc.index for tc in calls} == {0}
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert json.loads(arguments) == TOOL_ARGUMENTS
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text == "Let me check the weather."


def test_reasoning_is_left_out_for_openai() -> None:
    parsed = chunks(openai_stream(frames(THINKING_REQUEST)))
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    assert text == REPLY_TEXT


def test_exception_mid_stream_for_openai() -> None:
    data = frames({})
    events = converse_events({})
    head = b"".join(event_frame(k, p) for k, p in events[:3])
    data = head + exception_frame("throttlingException", "Slow down.") + frames({})
    out = openai_stream(data)
    assert out[-1].data != "[DONE]"
    error = json.loads(out[-1].data)["error"]
    assert error == {
        "message": "Slow down.",
        "type": "invalid_request_error",
        "param": None,
        "code": "throttlingException",
    }
    # Nothing after the error, though more frames followed it.
    assert sum("error" in json.loads(e.data) for e in out) == 1


def test_corrupt_frame_ends_the_openai_stream_with_an_error() -> None:
    data = bytearray(frames({}))
    data[len(data) // 2] ^= 0xFF
    out = openai_stream(bytes(data))
    error = json.loads(out[-1].data)["error"]
    assert error["code"] == "invalid_event_stream"
    assert "CRC" in error["message"]
    assert error["type"] == "server_error"


def test_what_came_before_a_corrupt_frame_reaches_the_client() -> None:
    events = converse_events({})
    good = b"".join(event_frame(k, p) for k, p in events[:3])
    bad = bytearray(event_frame(*events[3]))
    bad[-1] ^= 0x01
    translator = stream_to_openai.StreamTranslator(
        model=MODEL, response_id="c", created=0, include_usage=False
    )
    out = SSEDecoder().feed(translator.feed(good + bytes(bad)) + translator.finish())
    first_words = [json.loads(e.data)["choices"][0]["delta"].get("content") for e in out[:3]]
    assert first_words == ["", "Bonjour", " !"]
    assert "message CRC" in json.loads(out[-1].data)["error"]["message"]


def test_cut_off_stream_for_openai() -> None:
    events = converse_events({})
    data = b"".join(event_frame(k, p) for k, p in events[:4])
    out = openai_stream(data + b"\x00\x00")  # and half a prelude
    error = json.loads(out[-1].data)["error"]
    assert error["code"] == "invalid_event_stream"
    assert "ended inside a frame" in error["message"]
    out = openai_stream(data)
    assert "ended before the answer did" in json.loads(out[-1].data)["error"]["message"]


def test_stream_without_metadata_still_ends_for_openai() -> None:
    events = converse_events({})
    data = b"".join(event_frame(k, p) for k, p in events[:-1])
    parsed = chunks(openai_stream(data, include_usage=True))
    assert parsed[-1].choices[0].finish_reason == "stop"


# --- Anthropic -----------------------------------------------------------------------


def validate(events: list[tuple[str | None, Any]]) -> list[Any]:
    return [ANTHROPIC_EVENT.validate_python(payload) for _, payload in events]


def test_text_stream_for_anthropic() -> None:
    events = anthropic_stream(frames({}))
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    parsed = validate(events)
    assert parsed[0].message.id == "msg_1"
    assert parsed[0].message.model == MODEL
    text = "".join(e.delta.text for e in parsed if e.type == "content_block_delta")
    assert text == REPLY_TEXT
    delta = parsed[-2]
    assert delta.delta.stop_reason == "end_turn"
    assert (delta.usage.input_tokens, delta.usage.output_tokens) == (21, 13)
    assert delta.usage.cache_read_input_tokens == 4


def test_tool_and_thinking_stream_for_anthropic() -> None:
    parsed = validate(anthropic_stream(frames({**TOOLS_REQUEST, **THINKING_REQUEST})))
    starts = [e for e in parsed if e.type == "content_block_start"]
    assert [(e.index, e.content_block.type) for e in starts] == [
        (0, "thinking"),
        (1, "text"),
        (2, "tool_use"),
    ]
    assert starts[2].content_block.id == TOOL_USE_ID
    assert starts[2].content_block.name == "weather"
    stops = [e.index for e in parsed if e.type == "content_block_stop"]
    assert stops == [0, 1, 2]
    deltas = [e for e in parsed if e.type == "content_block_delta"]
    thinking = "".join(e.delta.thinking for e in deltas if e.delta.type == "thinking_delta")
    assert thinking == REASONING_TEXT
    (signature,) = [e.delta.signature for e in deltas if e.delta.type == "signature_delta"]
    assert signature == REASONING_SIGNATURE
    arguments = "".join(e.delta.partial_json for e in deltas if e.delta.type == "input_json_delta")
    assert all(e.index == 2 for e in deltas if e.delta.type == "input_json_delta")
    assert json.loads(arguments) == TOOL_ARGUMENTS
    assert parsed[-2].delta.stop_reason == "tool_use"


def test_redacted_reasoning_stream_for_anthropic() -> None:
    data = b"".join(
        [
            event_frame("messageStart", {"role": "assistant"}),
            event_frame(
                "contentBlockDelta",
                {
                    "contentBlockIndex": 0,
                    "delta": {"reasoningContent": {"redactedContent": "eA=="}},
                },
            ),
            event_frame("contentBlockStop", {"contentBlockIndex": 0}),
            event_frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "hi"}}),
            event_frame("contentBlockStop", {"contentBlockIndex": 1}),
            event_frame("messageStop", {"stopReason": "end_turn"}),
        ]
    )
    parsed = validate(anthropic_stream(data))
    assert [e.type for e in parsed] == [
        "message_start",
        "content_block_start",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert parsed[1].content_block.type == "redacted_thinking"
    assert parsed[1].content_block.data == "eA=="
    assert parsed[3].index == 1


@pytest.mark.parametrize(
    ("exception", "error_type"),
    [
        ("throttlingException", "rate_limit_error"),
        ("validationException", "invalid_request_error"),
        ("internalServerException", "api_error"),
        ("serviceUnavailableException", "api_error"),
        ("modelStreamErrorException", "api_error"),
    ],
)
def test_exception_mid_stream_for_anthropic(exception: str, error_type: str) -> None:
    events = converse_events({})
    head = b"".join(event_frame(k, p) for k, p in events[:3])
    out = anthropic_stream(head + exception_frame(exception, "It broke.") + frames({}))
    name, payload = out[-1]
    assert name == "error"
    assert payload == {"type": "error", "error": {"type": error_type, "message": "It broke."}}
    assert [n for n, _ in out].count("message_start") == 1
    validate(out[:-1])
    ErrorResponse.model_validate(payload)


def test_error_frame_and_corrupt_stream_for_anthropic() -> None:
    from ext_proc.translate.eventstream import encode_message

    error_frame = encode_message(
        {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"}, b""
    )
    name, payload = anthropic_stream(error_frame)[-1]
    assert (name, payload["error"]["message"]) == ("error", "boom")
    data = bytearray(frames({}))
    data[3] ^= 0x01  # the first frame's length: the prelude CRC catches it
    name, payload = anthropic_stream(bytes(data))[-1]
    assert name == "error"
    assert "prelude CRC" in payload["error"]["message"]


def test_cut_off_stream_for_anthropic() -> None:
    events = converse_events({})
    data = b"".join(event_frame(k, p) for k, p in events[:4])
    name, payload = anthropic_stream(data)[-1]
    assert name == "error"
    assert "ended before the answer did" in payload["error"]["message"]
    # A stop without the usage that follows it: the answer is whole, the counts zero.
    data = b"".join(event_frame(k, p) for k, p in events[:-1])
    out = validate(anthropic_stream(data))
    assert out[-1].type == "message_stop"
    assert out[-2].usage.output_tokens == 0


def test_unknown_events_and_frames_are_skipped() -> None:
    from ext_proc.translate.eventstream import encode_message

    noise = event_frame("somethingNew", {"x": 1}) + encode_message({":message-type": "ping"}, b"")
    data = noise + frames({})
    text = "".join(
        c.choices[0].delta.content or "" for c in chunks(openai_stream(data)) if c.choices
    )
    assert text == REPLY_TEXT
    assert validate(anthropic_stream(data))[-1].type == "message_stop"


def test_the_matched_stop_sequence_reaches_anthropic_streams() -> None:
    events = converse_events({})
    stop = {"stopReason": "stop_sequence", "additionalModelResponseFields": {"stop_sequence": "X"}}
    data = b"".join(event_frame(k, stop if k == "messageStop" else p) for k, p in events)
    delta = validate(anthropic_stream(data))[-2]
    assert (delta.delta.stop_reason, delta.delta.stop_sequence) == ("stop_sequence", "X")
