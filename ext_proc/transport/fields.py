"""Which header lists make an HTTP/2 request malformed (RFC 9113, 8.2 and 8.3).

A malformed request is a stream error: the stream is reset and the connection
keeps serving. Checked once per header block, before a handler sees it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["malformed_request", "malformed_trailers"]

_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
_REQUIRED_PSEUDO = (b":method", b":scheme", b":path")
# 8.2.2: connection-specific fields have no meaning in HTTP/2.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)


def malformed_request(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why ``headers`` (a request's first header block) is malformed, or ``None``."""
    seen: set[bytes] = set()
    regular = False
    for name, value in headers:
        problem = _field_problem(name, value)
        if problem is not None:
            return problem
        if name.startswith(b":"):
            if regular:
                return "pseudo-header after a regular field"
            if name not in _REQUEST_PSEUDO:
                return "unknown pseudo-header"
            if name in seen:
                return "repeated pseudo-header"
            seen.add(name)
        else:
            regular = True
    if any(name not in seen for name in _REQUIRED_PSEUDO):
        return "missing :method, :scheme or :path"
    return None


def malformed_trailers(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why a trailer block is malformed (8.1: no pseudo-headers there), or ``None``."""
    for name, value in headers:
        problem = _field_problem(name, value)
        if problem is not None:
            return problem
        if name.startswith(b":"):
            return "pseudo-header in trailers"
    return None


def _field_problem(name: bytes, value: bytes) -> str | None:
    if not name or name.lower() != name:
        return "empty or uppercase field name"
    if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
        return "connection-specific field"
    return None
