"""One processor per ext_proc stream, chosen by the role of the filter that opened it.

Envoy opens three kinds of stream to Archway, one per ext_proc filter; the
bootstrap tags each with gRPC initial metadata (``x-archway-phase``), and
``server.service`` picks the processor when the stream starts:

- routing (untagged): every LLM request's headers, then its buffered body;
  ``RoutingProcessor`` (``server.routing_stream``) decides and rewrites it;
- ``translation``: the response of a request whose body was translated;
  ``TranslationProcessor`` (``server.translation_stream``) rewrites it into
  the client's API, streamed or buffered;
- ``upstream``: each retry attempt in a failover cluster;
  ``AttemptProcessor`` (``server.attempt``) rewrites it for its fallback model.

Every processor answers every message and never raises, so Envoy always gets
an answer and a client always gets JSON in its own API's shape.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Protocol

from envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
    ProcessingResponse,
)

from ext_proc.errors import GatewayError
from ext_proc.headers import TRANSLATION_PHASE, UPSTREAM_PHASE

__all__ = ["StreamProcessor", "StreamRole", "internal_error"]

log = logging.getLogger("archway.processor")


class StreamRole(StrEnum):
    """What a stream is for; the value is its ``x-archway-phase`` metadata."""

    ROUTING = "routing"
    TRANSLATION = TRANSLATION_PHASE
    ATTEMPT = UPSTREAM_PHASE


class StreamProcessor(Protocol):
    async def handle(self, request: ProcessingRequest) -> ProcessingResponse:
        """The answer to one message of the stream; never raises."""
        ...


def internal_error(phase: str | None) -> GatewayError:
    """Log the exception being handled and return the 500 the client gets for it:
    never a traceback to the client and never a hung stream."""
    log.exception("unexpected error while processing %s", phase)
    return GatewayError(500, "Archway failed to process this request.", code="internal_error")
