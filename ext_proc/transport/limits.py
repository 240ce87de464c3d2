"""What one peer may cost a worker, and the counters that enforce it.

Each bound answers one way a client can make the server hold memory or burn
CPU without sending requests: idle sockets, half-sent messages, control-frame
floods (CVE-2019-9512 PING, 9515 SETTINGS, 9518 empty frames), rapid resets
(CVE-2023-44487), and output that the peer never reads. The defaults leave
Envoy, which sends whole messages and few control frames, far inside them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ControlBudget", "Limits", "LogBudget", "ResetGuard"]


@dataclass(frozen=True)
class Limits:
    max_concurrent_streams: int = 1024
    """Streams open at once on one connection (advertised in SETTINGS). Envoy
    opens another connection when one is full."""
    max_connections: int = 2048
    """Connections one worker holds. Past it, an idle one (no preface yet, or no
    open stream) is closed to make room, else the newcomer is."""
    handshake_timeout_s: float = 10.0
    """From accept to the client's connection preface (and TLS handshake)."""
    idle_timeout_s: float = 600.0
    """A connection with no open stream for this long is sent GOAWAY and closed."""
    stall_timeout_s: float = 30.0
    """A connection holding part of a request message, or output the peer does
    not read, without progress for this long is closed."""
    max_header_block: int = 64 * 1024
    """Encoded header block, HEADERS and CONTINUATION together."""
    max_header_list: int = 64 * 1024
    """Decoded header list (RFC 7541 sizes: name + value + 32 per field); what
    indexed fields referring to big table entries can expand a block to."""
    max_continuations: int = 64
    """CONTINUATION frames in one header block."""
    control_burst: int = 1000
    """Control frames (PING, SETTINGS, PRIORITY, RST_STREAM, WINDOW_UPDATE,
    empty DATA and CONTINUATION, unknown types) a connection may send at once."""
    control_per_s: float = 100.0
    """How fast that allowance refills over time."""
    control_per_stream: int = 4
    """Allowance each stream the peer opens brings (its RST_STREAM, WINDOW_UPDATE)."""
    reset_min_streams: int = 200
    """Streams seen before the rapid-reset ratio is judged."""
    write_high_water: int = 1 << 20
    """Queued output past which the connection stops reading from its peer."""
    read_size: int = 256 * 1024
    """The read buffer, shared by a worker's connections."""
    huffman_memo_entries: int = 1024
    """Decoded Huffman strings remembered per worker (Envoy resends its :path)."""
    huffman_memo_max_string: int = 256
    """Longer coded strings are decoded each time, never remembered."""

    def __post_init__(self) -> None:
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


class ControlBudget:
    """A token bucket for control frames: ``control_burst`` at once, refilled
    by time and by the streams the peer opens. Spending past empty is a flood."""

    __slots__ = ("_burst", "_per_s", "_stamp", "tokens")

    def __init__(self, limits: Limits, now: float) -> None:
        self._burst = float(limits.control_burst)
        self._per_s = limits.control_per_s
        self._stamp = now
        self.tokens = self._burst

    def spend(self, clock: Callable[[], float]) -> bool:
        """Take one token; False once the bucket is empty. The clock is read
        only when the bucket runs low."""
        if self.tokens < 1.0:
            now = clock()
            self.tokens = min(self._burst, self.tokens + (now - self._stamp) * self._per_s)
            self._stamp = now
            if self.tokens < 1.0:
                return False
        self.tokens -= 1.0
        return True

    def grant(self, tokens: float) -> None:
        self.tokens = min(self._burst, self.tokens + tokens)


class ResetGuard:
    """CVE-2023-44487: a client that opens streams and resets them before any
    answer makes the server start work it then throws away. As Envoy does, a
    connection whose premature resets reach half its streams, once it has
    opened ``reset_min_streams``, is a flood. Counted per window of streams so
    that a long-lived connection cannot dilute an attack with its history."""

    __slots__ = ("_min", "opened", "premature")

    def __init__(self, limits: Limits) -> None:
        self._min = limits.reset_min_streams
        self.opened = 0
        self.premature = 0

    def on_open(self) -> None:
        self.opened += 1
        if self.opened >= 10 * self._min:
            self.opened //= 2
            self.premature //= 2

    def on_premature_reset(self) -> bool:
        """Count one; True when the connection is flooding."""
        self.premature += 1
        return self.opened >= self._min and 2 * self.premature >= self.opened


class LogBudget:
    """At most ``per_minute`` lines a minute from one logger call site; the rest
    are counted and summarised. A peer that can make the server log must not
    be able to fill the disk."""

    __slots__ = ("_count", "_dropped", "_log", "_per_minute", "_start")

    def __init__(self, log: logging.Logger, per_minute: int = 20) -> None:
        self._log = log
        self._per_minute = per_minute
        self._start = time.monotonic()
        self._count = 0
        self._dropped = 0

    def warning(self, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._start >= 60.0:
            if self._dropped:
                self._log.warning(
                    "%d similar messages suppressed in the last minute", self._dropped
                )
            self._start, self._count, self._dropped = now, 0, 0
        if self._count < self._per_minute:
            self._count += 1
            self._log.warning(msg, *args, exc_info=exc_info)
        else:
            self._dropped += 1
