"""The AWS event-stream codec: known frames byte for byte, every header type,
any chunking, and every corruption refused with a clear error."""

from __future__ import annotations

import struct
import uuid
import zlib
from datetime import UTC, datetime

import pytest
from botocore import eventstream
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.translate.eventstream import (
    MAX_HEADERS_LENGTH,
    EventStreamDecoder,
    EventStreamError,
    Message,
    decode_headers,
    encode_message,
)

# Published test vectors of the format (aws-c-event-stream's, also quoted in the
# docs of several independent implementations): a payload alone, and with one
# string header.
PAYLOAD = b'{"foo": "bar"}'
EMPTY_HEADERS_FRAME = bytes(
    [0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138, *PAYLOAD, 174, 114, 88, 228]
)
CONTENT_TYPE_FRAME = (
    bytes([0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70, 12])
    + b"content-type"
    + bytes([7, 0, 16])
    + b"application/json"
    + PAYLOAD
    + bytes([111, 162, 191, 59])
)


def decode_all(data: bytes, sizes: list[int] | None = None) -> list[Message]:
    decoder = EventStreamDecoder()
    messages: list[Message] = []
    if sizes is None:
        messages += decoder.feed(data)
    else:
        start = 0
        for size in sizes:
            messages += decoder.feed(data[start : start + size])
            start += size
        messages += decoder.feed(data[start:])
    decoder.finish()
    return messages


def test_known_frames_encode_byte_for_byte() -> None:
    assert encode_message({}, PAYLOAD) == EMPTY_HEADERS_FRAME
    assert encode_message({"content-type": "application/json"}, PAYLOAD) == CONTENT_TYPE_FRAME


def test_known_frames_decode() -> None:
    (first, second) = decode_all(EMPTY_HEADERS_FRAME + CONTENT_TYPE_FRAME)
    assert first == Message({}, PAYLOAD)
    assert second.headers == {"content-type": "application/json"}
    assert second.header("content-type") == "application/json"
    assert second.payload == PAYLOAD


def test_one_byte_at_a_time() -> None:
    data = CONTENT_TYPE_FRAME * 3
    decoder = EventStreamDecoder()
    messages: list[Message] = []
    for i in range(len(data)):
        messages += decoder.feed(data[i : i + 1])
        # A frame comes out exactly when its last byte arrives, never before.
        assert len(messages) == (i + 1) // len(CONTENT_TYPE_FRAME)
    assert decoder.pending == 0


def _header(name: bytes, kind: int, value: bytes) -> bytes:
    return bytes([len(name)]) + name + bytes([kind]) + value


def test_every_header_type_decodes() -> None:
    an_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    section = b"".join(
        [
            _header(b"t", 0, b""),
            _header(b"f", 1, b""),
            _header(b"byte", 2, struct.pack(">b", -5)),
            _header(b"short", 3, struct.pack(">h", -300)),
            _header(b"int", 4, struct.pack(">i", 70000)),
            _header(b"long", 5, struct.pack(">q", -(2**40))),
            _header(b"bytes", 6, struct.pack(">H", 3) + b"\x00\xff\x10"),
            _header(b"string", 7, struct.pack(">H", 5) + "café".encode()),
            _header(b"time", 8, struct.pack(">q", 1_700_000_000_123)),
            _header(b"uuid", 9, an_id.bytes),
        ]
    )
    assert decode_headers(section) == {
        "t": True,
        "f": False,
        "byte": -5,
        "short": -300,
        "int": 70000,
        "long": -(2**40),
        "bytes": b"\x00\xff\x10",
        "string": "café",
        "time": datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
        "uuid": an_id,
    }


def test_every_header_type_round_trips() -> None:
    headers = {
        ":event-type": "contentBlockDelta",
        "yes": True,
        "no": False,
        "count": 2**33,
        "raw": b"\x01\x02",
        "when": datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "id": uuid.UUID(int=7),
    }
    (message,) = decode_all(encode_message(headers, b"payload"))
    assert message.headers == headers
    assert message.payload == b"payload"


def _with_crc(prefix: bytes) -> bytes:
    return prefix + struct.pack(">I", zlib.crc32(prefix))


def test_bad_prelude_crc_is_refused() -> None:
    frame = bytearray(CONTENT_TYPE_FRAME)
    frame[8] ^= 0x01
    with pytest.raises(EventStreamError, match="prelude CRC"):
        EventStreamDecoder().feed(bytes(frame))


def test_frames_before_a_corrupt_one_are_kept() -> None:
    corrupt = bytearray(CONTENT_TYPE_FRAME)
    corrupt[-1] ^= 0x01
    with pytest.raises(EventStreamError) as caught:
        EventStreamDecoder().feed(EMPTY_HEADERS_FRAME + CONTENT_TYPE_FRAME + bytes(corrupt))
    assert [m.payload for m in caught.value.decoded] == [PAYLOAD, PAYLOAD]


def test_bad_message_crc_is_refused() -> None:
    frame = bytearray(CONTENT_TYPE_FRAME)
    frame[-6] ^= 0x20  # inside the payload
    with pytest.raises(EventStreamError, match="message CRC"):
        EventStreamDecoder().feed(bytes(frame))


def test_an_oversized_frame_is_refused_from_its_prelude_alone() -> None:
    prelude = _with_crc(struct.pack(">II", 100_000, 0))
    decoder = EventStreamDecoder(max_message_length=64 * 1024)
    with pytest.raises(EventStreamError, match=r"outside 16\.\.65536"):
        decoder.feed(prelude)


def test_a_frame_shorter_than_its_overhead_is_refused() -> None:
    with pytest.raises(EventStreamError, match="outside"):
        EventStreamDecoder().feed(_with_crc(struct.pack(">II", 15, 0)))


def test_headers_longer_than_the_frame_are_refused() -> None:
    with pytest.raises(EventStreamError, match="does not fit"):
        EventStreamDecoder().feed(_with_crc(struct.pack(">II", 40, 30)))
    big = MAX_HEADERS_LENGTH + 1
    with pytest.raises(EventStreamError, match="does not fit"):
        EventStreamDecoder().feed(_with_crc(struct.pack(">II", big + 100, big)))


def test_a_header_running_past_its_section_is_refused() -> None:
    with pytest.raises(EventStreamError, match="runs past"):
        decode_headers(_header(b"s", 7, struct.pack(">H", 10) + b"short"))
    with pytest.raises(EventStreamError, match="runs past"):
        decode_headers(b"\x09abc")


def test_unknown_header_type_and_bad_utf8_are_refused() -> None:
    with pytest.raises(EventStreamError, match="unknown value type 12"):
        decode_headers(_header(b"x", 12, b""))
    with pytest.raises(EventStreamError, match="not UTF-8"):
        decode_headers(_header(b"s", 7, struct.pack(">H", 1) + b"\xff"))


def test_a_stream_cut_inside_a_frame_is_an_error_at_the_end() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(CONTENT_TYPE_FRAME + CONTENT_TYPE_FRAME[:20]) != []
    with pytest.raises(EventStreamError, match="ended inside a frame"):
        decoder.finish()


def test_encoder_refuses_what_cannot_be_framed() -> None:
    with pytest.raises(EventStreamError, match=r"1\.\.255 bytes"):
        encode_message({"x" * 256: "v"}, b"")
    with pytest.raises(EventStreamError, match="over 65535"):
        encode_message({"x": "v" * 70000}, b"")
    with pytest.raises(EventStreamError, match="not encodable"):
        encode_message({"x": 1.5}, b"")  # type: ignore[dict-item]


_header_values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.binary(max_size=40),
    st.text(max_size=40),
    st.uuids(),
)
_headers = st.dictionaries(st.text(min_size=1, max_size=20), _header_values, max_size=6)
_frames = st.lists(st.tuples(_headers, st.binary(max_size=300)), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(frames=_frames, cuts=st.lists(st.integers(min_value=0, max_value=64), max_size=30))
def test_round_trip_in_any_chunking(
    frames: list[tuple[dict[str, object], bytes]], cuts: list[int]
) -> None:
    data = b"".join(encode_message(h, p) for h, p in frames)  # type: ignore[arg-type]
    messages = decode_all(data, cuts)
    assert [(dict(m.headers), m.payload) for m in messages] == frames


@settings(max_examples=100, deadline=None)
@given(frames=_frames)
def test_botocore_reads_what_we_write(frames: list[tuple[dict[str, object], bytes]]) -> None:
    """botocore's parser (what boto3 uses against Bedrock) as the oracle."""
    buffer = eventstream.EventStreamBuffer()
    buffer.add_data(b"".join(encode_message(h, p) for h, p in frames))  # type: ignore[arg-type]
    parsed = list(buffer)
    assert len(parsed) == len(frames)
    for message, (headers, payload) in zip(parsed, frames, strict=True):
        assert message.payload == payload
        assert message.headers == {
            # botocore leaves a UUID as its 16 raw bytes.
            name: value.bytes if isinstance(value, uuid.UUID) else value
            for name, value in headers.items()
        }


def test_botocore_and_we_agree_on_every_header_type() -> None:
    section = b"".join(
        [
            _header(b"byte", 2, struct.pack(">b", -5)),
            _header(b"short", 3, struct.pack(">h", -300)),
            _header(b"int", 4, struct.pack(">i", 70000)),
            _header(b"time", 8, struct.pack(">q", 1_700_000_000_123)),
        ]
    )
    total = 16 + len(section) + 2
    frame = _with_crc(_with_crc(struct.pack(">II", total, len(section))) + section + b"{}")
    buffer = eventstream.EventStreamBuffer()
    buffer.add_data(frame)
    (theirs,) = list(buffer)
    (ours,) = decode_all(frame)
    assert theirs.payload == ours.payload == b"{}"
    for name in ("byte", "short", "int"):
        assert theirs.headers[name] == ours.headers[name]
    # botocore leaves a timestamp as integer milliseconds; we give a datetime.
    assert theirs.headers["time"] == 1_700_000_000_123
    assert ours.headers["time"] == datetime.fromtimestamp(1_700_000_000.123, tz=UTC)
