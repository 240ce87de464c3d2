"""Incremental SSE parsing: whatever the cuts, the same events come out."""

from __future__ import annotations

import pytest

from ext_proc.translate import sse
from ext_proc.translate.sse import SSEDecoder, SSEError, SSEEvent, encode_event

ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1"}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","delta":{"text":"caf\xc3\xa9 \xe2\x98\x95"}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)
EXPECTED = [
    SSEEvent("message_start", '{"type":"message_start","message":{"id":"msg_1"}}'),
    SSEEvent("ping", '{"type": "ping"}'),
    SSEEvent("content_block_delta", '{"type":"content_block_delta","delta":{"text":"café ☕"}}'),
    SSEEvent("message_stop", '{"type":"message_stop"}'),
]


def decode_in_pieces(stream: bytes, cuts: list[int]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        events += decoder.feed(stream[start:cut])
        start = cut
    return events + decoder.flush()


def test_whole_stream() -> None:
    assert decode_in_pieces(ANTHROPIC_STREAM, []) == EXPECTED


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_every_single_cut_gives_the_same_events(line_end: bytes) -> None:
    stream = ANTHROPIC_STREAM.replace(b"\n", line_end)
    for cut in range(1, len(stream)):
        assert decode_in_pieces(stream, [cut]) == EXPECTED, cut


def test_byte_by_byte() -> None:
    cuts = list(range(1, len(ANTHROPIC_STREAM)))
    assert decode_in_pieces(ANTHROPIC_STREAM.replace(b"\n", b"\r\n"), cuts) == EXPECTED


def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == []
    assert decoder.feed(b"\ndata: b\n\n") == [SSEEvent(None, "a"), SSEEvent(None, "b")]


def test_events_come_out_as_soon_as_they_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n') == []
    assert decoder.feed(b"\n") == [SSEEvent(None, '{"a":1}')]


def test_openai_stream_with_done() -> None:
    stream = b'data: {"id":"1"}\n\ndata: [DONE]\n\n'
    assert decode_in_pieces(stream, [3, 17]) == [
        SSEEvent(None, '{"id":"1"}'),
        SSEEvent(None, "[DONE]"),
    ]


def test_fields_the_spec_allows() -> None:
    stream = (
        b": keep-alive comment\n"
        b"id: 7\nretry: 1000\n"
        b"event:tight\ndata:no space\ndata:  two spaces\n\n"
        b"event: orphan\n\n"  # no data: not an event
        b"data\n\n"  # a bare field name is an empty value
    )
    assert decode_in_pieces(stream, []) == [
        SSEEvent("tight", "no space\n two spaces"),
        SSEEvent(None, ""),
    ]


def test_flush_ends_the_last_event_without_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.flush() == [SSEEvent(None, "[DONE]")]
    assert decoder.flush() == []
    assert decoder.feed(b"data: cr\r") == []
    assert decoder.flush() == [SSEEvent(None, "cr")]


def test_an_endless_line_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "MAX_PENDING_BYTES", 64)
    decoder = SSEDecoder()
    decoder.feed(b"data: " + b"x" * 50)
    with pytest.raises(SSEError):
        decoder.feed(b"x" * 50)


def test_encode_event() -> None:
    assert encode_event('{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_event("{}", "ping") == b"event: ping\ndata: {}\n\n"
