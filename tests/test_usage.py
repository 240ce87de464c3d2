"""Usage extraction from each API's answers and streams (ext_proc/telemetry/usage.py)."""

from __future__ import annotations

import json

import pytest

from ext_proc.telemetry.usage import StreamMeter, Usage, usage_from_body


def _sse(*events: tuple[str | None, dict]) -> bytes:
    out = b""
    for name, data in events:
        if name is not None:
            out += f"event: {name}\n".encode()
        out += f"data: {json.dumps(data)}\n\n".encode()
    return out


def test_chat_completion_body() -> None:
    body = {
        "object": "chat.completion",
        "usage": {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 64},
            "completion_tokens_details": {"reasoning_tokens": 12},
        },
    }
    assert usage_from_body(json.dumps(body).encode()) == Usage(120, 30, 64, 12)


def test_anthropic_body_counts_cache_reads_and_writes_as_input() -> None:
    body = {
        "type": "message",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 7,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 5,
        },
    }
    got = usage_from_body(json.dumps(body).encode())
    assert got == Usage(115, 7, 100, 0, 5)


def test_responses_body() -> None:
    body = {
        "object": "response",
        "usage": {
            "input_tokens": 50,
            "output_tokens": 20,
            "input_tokens_details": {"cached_tokens": 8},
            "output_tokens_details": {"reasoning_tokens": 4},
            "total_tokens": 70,
        },
    }
    assert usage_from_body(json.dumps(body).encode()) == Usage(50, 20, 8, 4)


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"usage": null}', b'{"usage": {"x": 1}}', b'{"id": 1}']
)
def test_no_usage(body: bytes) -> None:
    assert usage_from_body(body) is None


def test_bad_counts_are_zero() -> None:
    body = {"usage": {"prompt_tokens": True, "completion_tokens": -4}}
    assert usage_from_body(json.dumps(body).encode()) == Usage()


def _feed_in_pieces(stream: bytes, piece: int) -> StreamMeter:
    meter = StreamMeter()
    for i in range(0, len(stream), piece):
        meter.feed(stream[i : i + piece], now=float(i))
    return meter


@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_chat_stream_with_include_usage(piece: int) -> None:
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    text = {"choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": None}
    last = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
    stream = _sse((None, role), (None, text), (None, last)) + b"data: [DONE]\n\n"
    meter = _feed_in_pieces(stream, piece)
    assert meter.usage == Usage(9, 2)
    first = stream.index(b'"Hi"')
    assert meter.first_output_at is not None
    # The first output is recorded at the piece that completed its event.
    assert first <= meter.first_output_at + piece


def test_chat_stream_without_usage_has_none() -> None:
    text = {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    meter = _feed_in_pieces(_sse((None, text)) + b"data: [DONE]\n\n", 10_000)
    assert meter.usage is None
    assert meter.first_output_at == 0.0


def test_anthropic_stream_merges_start_and_delta() -> None:
    stream = _sse(
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5}
                },
            },
        ),
        ("content_block_start", {"type": "content_block_start", "index": 0}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "x"}}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 42}}),
        ("message_stop", {"type": "message_stop"}),
    )
    meter = _feed_in_pieces(stream, 13)
    assert meter.usage == Usage(30, 42, 5)
    assert meter.first_output_at is not None


def test_responses_stream() -> None:
    stream = _sse(
        ("response.created", {"type": "response.created", "response": {"usage": None}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "a"}),
        (
            "response.completed",
            {
                "type": "response.completed",
                "response": {
                    "usage": {
                        "input_tokens": 3,
                        "output_tokens": 4,
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens_details": {"reasoning_tokens": 1},
                    }
                },
            },
        ),
    )
    meter = _feed_in_pieces(stream, 5)
    assert meter.usage == Usage(3, 4, 0, 1)


def test_not_sse_gives_no_usage_and_no_error() -> None:
    meter = StreamMeter()
    meter.feed(b"\x00" * 100, now=0.0)
    assert meter.usage is None


def test_the_last_event_finishes_a_stream() -> None:
    for last in (b"data: [DONE]\n\n", b"event: message_stop\ndata: {}\n\n"):
        meter = StreamMeter()
        meter.feed(b'data: {"choices": []}\n\n', now=0.0)
        assert not meter.finished
        meter.feed(last, now=1.0)
        assert meter.finished
