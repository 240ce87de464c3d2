"""HPACK (RFC 7541) glue: a decoder for the client's header blocks, and the
literal encoding of what this server sends.

The decoder is this module's rather than ``hpack``'s: Envoy sends ``:path``
on every stream as a Huffman-coded literal that is never indexed, and
``hpack``'s pure-Python Huffman decoder made that one header cost more than
the rest of the stream's frames. The same coded strings recur, so decoded
short strings are remembered, in one bounded memo per worker. The static
table and the Huffman code are ``hpack``'s. What this server sends is never
added to the peer's table, so the encoder keeps no state.
"""

from __future__ import annotations

from hpack.exceptions import HPACKError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = ["DecodeError", "HeaderDecoder", "HuffmanMemo", "literal"]

_STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_ENTRY_OVERHEAD = 32
DEFAULT_TABLE_SIZE = 4096
"""SETTINGS_HEADER_TABLE_SIZE, never raised by this server: the table a peer
can fill is 4 KiB per connection."""


class DecodeError(Exception):
    """A header block that cannot be decoded: a COMPRESSION_ERROR (RFC 9113, 4.3)."""


class HeaderListTooLarge(DecodeError):
    """The decoded list passed the limit; the table is left out of step, so
    the connection cannot go on."""


def literal(name: bytes, value: bytes) -> bytes:
    """HPACK "literal header field without indexing, new name" (6.2.2)."""
    return b"\x00" + _encode_int(len(name), 7) + name + _encode_int(len(value), 7) + value


def _encode_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class HuffmanMemo:
    """Decoded Huffman strings, shared by a worker's connections: decoding is a
    pure function, and one memo bounds memory however many peers send
    distinct strings. Only short strings are kept; when full it starts over."""

    __slots__ = ("_entries", "_max_entries", "_max_string")

    def __init__(self, max_entries: int = 1024, max_string: int = 256) -> None:
        self._entries: dict[bytes, bytes] = {}
        self._max_entries = max_entries
        self._max_string = max_string

    def decode(self, raw: bytes) -> bytes:
        decoded = self._entries.get(raw)
        if decoded is not None:
            return decoded
        try:
            decoded = decode_huffman(raw)
        except HPACKError as exc:
            raise DecodeError(str(exc)) from None
        if len(raw) <= self._max_string:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[raw] = decoded
        return decoded


class HeaderDecoder:
    """One connection's decoding context: its dynamic table and limits."""

    __slots__ = ("_huffman", "_max_list", "_max_size", "_size", "_table")

    def __init__(self, huffman: HuffmanMemo, max_list: int = 64 * 1024) -> None:
        self._table: list[tuple[bytes, bytes]] = []
        """The dynamic table, newest entry first."""
        self._size = 0
        self._max_size = DEFAULT_TABLE_SIZE
        self._huffman = huffman
        self._max_list = max_list

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        i, end = 0, len(block)
        try:
            while i < end:
                b = block[i]
                if b & 0x80:  # indexed field
                    index, i = self._int(block, i, 7)
                    out.append(self._entry(index))
                elif b & 0x40:  # literal, added to the table
                    index, i = self._int(block, i, 6)
                    name, i = (self._entry(index)[0], i) if index else self._string(block, i)
                    value, i = self._string(block, i)
                    out.append((name, value))
                    self._add(name, value)
                elif b & 0x20:  # table size update
                    if out:
                        raise DecodeError("table size update after a header field")
                    size, i = self._int(block, i, 5)
                    if size > DEFAULT_TABLE_SIZE:
                        raise DecodeError("table size above SETTINGS_HEADER_TABLE_SIZE")
                    self._max_size = size
                    self._evict()
                    continue
                else:  # literal, not indexed or never indexed
                    index, i = self._int(block, i, 4)
                    name, i = (self._entry(index)[0], i) if index else self._string(block, i)
                    value, i = self._string(block, i)
                    out.append((name, value))
        except IndexError:
            raise DecodeError("truncated header block") from None
        # The list's RFC 7541 size: an indexed field of one byte can name a
        # 4 KiB table entry, so the block's own size bounds nothing. Counted
        # only when a cheap bound (literals expand at most 8/5 by Huffman,
        # any entry is at most the table's size) says it might be over.
        if 2 * end + (_ENTRY_OVERHEAD + DEFAULT_TABLE_SIZE) * len(out) > self._max_list:
            size = sum(len(name) + len(value) for name, value in out)
            if size + _ENTRY_OVERHEAD * len(out) > self._max_list:
                raise HeaderListTooLarge(f"header list over {self._max_list} bytes")
        return out

    @staticmethod
    def _int(block: bytes, i: int, bits: int) -> tuple[int, int]:
        mask = (1 << bits) - 1
        value = block[i] & mask
        i += 1
        if value < mask:
            return value, i
        shift = 0
        while True:
            b = block[i]
            i += 1
            value += (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value, i
            if shift > 28:
                raise DecodeError("integer too large")

    def _string(self, block: bytes, i: int) -> tuple[bytes, int]:
        huffman = block[i] & 0x80
        length, i = self._int(block, i, 7)
        if i + length > len(block):
            raise DecodeError("truncated string")
        raw = block[i : i + length]
        if huffman:
            return self._huffman.decode(raw), i + length
        return raw, i + length

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if index <= 0:
            raise DecodeError("header index 0")
        if index <= len(_STATIC_TABLE):
            return _STATIC_TABLE[index - 1]
        dynamic = index - len(_STATIC_TABLE) - 1
        if dynamic >= len(self._table):
            raise DecodeError(f"header index {index} out of range")
        return self._table[dynamic]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self._max_size:
            self._table.clear()
            self._size = 0
            return
        self._table.insert(0, (name, value))
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max_size:
            name, value = self._table.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD
