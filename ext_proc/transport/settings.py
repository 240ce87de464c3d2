"""HTTP/2 SETTINGS (RFC 9113, 6.5): what this server advertises, and the
checks on what a client sends."""

from __future__ import annotations

import struct

from ext_proc.transport import frames as f
from ext_proc.transport.frames import H2ConnectionError

__all__ = ["OUR_MAX_FRAME", "PeerSettings", "advertised"]

HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

OUR_MAX_FRAME = 1 << 20
"""Bigger frames than HTTP/2's 16 KiB default: a whole buffered body arrives in
fewer frames, so fewer trips through the parser."""

_pair = struct.Struct(">HI")


def advertised(max_concurrent_streams: int, initial_window: int, max_header_list: int) -> bytes:
    """This server's SETTINGS frame, the same for every connection."""
    pairs = (
        (ENABLE_PUSH, 0),
        (MAX_CONCURRENT_STREAMS, max_concurrent_streams),
        (INITIAL_WINDOW_SIZE, initial_window),
        (MAX_FRAME_SIZE, OUR_MAX_FRAME),
        (MAX_HEADER_LIST_SIZE, max_header_list),
    )
    return f.frame(f.SETTINGS, 0, 0, b"".join(_pair.pack(k, v) for k, v in pairs))


class PeerSettings:
    """The client's settings this server acts on; the rest are checked and let be
    (HEADER_TABLE_SIZE: nothing is ever added to the client's decoder table)."""

    __slots__ = ("initial_window", "max_frame")

    def __init__(self) -> None:
        self.initial_window = f.DEFAULT_WINDOW
        self.max_frame = f.DEFAULT_MAX_FRAME

    @staticmethod
    def parse(payload: bytes) -> list[tuple[int, int]]:
        """The (identifier, value) pairs of a SETTINGS payload, each checked."""
        if len(payload) % 6:
            raise H2ConnectionError(f.FRAME_SIZE_ERROR, "malformed SETTINGS")
        pairs = [_pair.unpack_from(payload, i) for i in range(0, len(payload), 6)]
        for ident, value in pairs:
            if ident == INITIAL_WINDOW_SIZE and value > f.MAX_WINDOW:
                raise H2ConnectionError(
                    f.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large"
                )
            if ident == MAX_FRAME_SIZE and not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
            if ident == ENABLE_PUSH and value > 1:
                raise H2ConnectionError(f.PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
        return pairs
