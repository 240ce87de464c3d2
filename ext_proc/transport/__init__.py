"""The HTTP/2 gRPC transport the ext_proc server runs on.

Split as python-hyper's h2 splits a protocol: ``frames`` (the wire format),
``settings``, ``windows`` (flow control), ``hpack`` (header decoding),
``connection`` (the state machine of one connection), ``grpc`` (gRPC's
framing, statuses and trailers), ``limits`` (what one peer may cost) and
``server`` (listening, accepting, timeouts). ``tasks`` runs handlers eagerly.
See docs/transport.md for why it exists and what it withstands.
"""

from ext_proc.transport.grpc import (
    GrpcError,
    HandlerFactory,
    RequestHeaders,
    StreamHandler,
    StreamStatus,
)
from ext_proc.transport.limits import Limits
from ext_proc.transport.server import DEFAULT_MAX_CONCURRENT_STREAMS, H2GrpcServer, tls_context

__all__ = [
    "DEFAULT_MAX_CONCURRENT_STREAMS",
    "GrpcError",
    "H2GrpcServer",
    "HandlerFactory",
    "Limits",
    "RequestHeaders",
    "StreamHandler",
    "StreamStatus",
    "tls_context",
]
