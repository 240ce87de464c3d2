"""HTTP/2 flow control (RFC 9113, 5.2 and 6.9), the receiving side.

A window bounds what the peer may send before this server says it has room
again. Room is given back when a request message is handed to its handler
(or thrown away), not when its bytes arrive: bytes held for a message still
being sent, or queued behind a busy handler, keep their place in the window.
So what one stream can make the server hold is its window, and what one
connection can, the connection's. The sending side is a plain counter per
stream and per connection (see ``connection``).
"""

from __future__ import annotations

from ext_proc.transport.frames import MAX_WINDOW

__all__ = ["ReceiveWindow", "connection_window", "stream_window"]


def stream_window(max_message_bytes: int) -> int:
    """Room for one whole message and its 5-byte prefix: a stream never waits
    on a WINDOW_UPDATE in the middle of a message it is allowed to send."""
    return min(MAX_WINDOW, max_message_bytes + 5)


def connection_window(max_message_bytes: int) -> int:
    """Several streams' worth: concurrent streams sending large bodies all
    make progress. At least 32 MiB, so small limits do not serialise them."""
    return min(MAX_WINDOW, max(4 * stream_window(max_message_bytes), 32 << 20))


class ReceiveWindow:
    __slots__ = ("available", "pending", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.available = size
        """What the peer may still send."""
        self.pending = 0
        """Room given back here but not yet announced with WINDOW_UPDATE."""

    @property
    def held(self) -> int:
        """Bytes received and not yet given back."""
        return self.size - self.available - self.pending

    def receive(self, n: int) -> bool:
        """Take ``n`` bytes of the window; False when the peer overran it."""
        if n > self.available:
            return False
        self.available -= n
        return True

    def release(self, n: int) -> int:
        """Give ``n`` bytes back; the increment to announce now, or 0 while it
        is under half the window (one WINDOW_UPDATE per half, not per message).
        ``release(0)`` announces what is owed once that is at least half."""
        self.pending += n
        if self.pending * 2 < self.size:
            return 0
        increment, self.pending = self.pending, 0
        self.available += increment
        return increment
