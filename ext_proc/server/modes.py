"""What each ext_proc filter asks Envoy to send, written once as plain data.

Envoy's ``ProcessingMode`` says which parts of a request and response reach the
ext_proc server. The bootstrap writes these modes into Envoy's config
(``Mode.envoy()``: its JSON form); ``ext_proc.server.messages`` sends some of
them back as mode overrides, built from that same form. Trailers are never
asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ATTEMPT_FIRST",
    "ATTEMPT_RETRY",
    "ROUTING",
    "ROUTING_ONE_MESSAGE",
    "TRANSLATION_OFF",
    "TRANSLATION_ON",
    "BodyMode",
    "Mode",
    "translation_body",
]


class BodyMode(StrEnum):
    """How Envoy hands a body over (the names of Envoy's ``BodySendMode``)."""

    NONE = "NONE"
    """Not at all: the body goes on untouched."""
    STREAMED = "STREAMED"
    """Chunk by chunk as it arrives; each answer replaces that chunk."""
    BUFFERED = "BUFFERED"
    """Whole, once; the answer replaces it and may still set headers."""


@dataclass(frozen=True, slots=True)
class Mode:
    request_headers: bool = False
    request_body: BodyMode = BodyMode.NONE
    response_headers: bool = False
    response_body: BodyMode = BodyMode.NONE

    def envoy(self) -> dict[str, str]:
        """Envoy's ``ProcessingMode`` in its JSON form."""
        return {
            "request_header_mode": "SEND" if self.request_headers else "SKIP",
            "request_body_mode": self.request_body.value,
            "request_trailer_mode": "SKIP",
            "response_header_mode": "SEND" if self.response_headers else "SKIP",
            "response_body_mode": self.response_body.value,
            "response_trailer_mode": "SKIP",
        }


ROUTING = Mode(request_headers=True, request_body=BodyMode.BUFFERED)
"""The routing filter, and its twin upstream of a failover cluster: routing
needs the headers and the whole body (the model is in the body); responses are
the translation filter's business."""

ROUTING_ONE_MESSAGE = Mode(request_body=BodyMode.BUFFERED)
"""The routing filter in one-message mode: the body alone, with the headers the
decision reads as attributes (``ext_proc.deploy.one_message``)."""

ATTEMPT_FIRST = Mode(request_headers=True)
"""Override for a failover cluster's first attempt, which already carries what
the routing filter decided. The bootstrap skips the filter on that attempt
(``ExtensionWithMatcher``), so only a bootstrap rendered before that sends it."""

ATTEMPT_RETRY = Mode(request_headers=True, request_body=BodyMode.BUFFERED, response_headers=True)
"""Override for a retry: its body's model is rewritten, and the model that
answered is reported on the response."""

TRANSLATION_OFF = Mode()
"""The response-translation filter everywhere but on translated routes."""

TRANSLATION_ON = Mode(response_headers=True)
"""The translation filter on a translated route: only the response headers,
from which the server picks the body mode with an override (Envoy honours one
only in answer to a headers message)."""


def translation_body(body: BodyMode) -> Mode:
    """The override that asks for a translated response's body as ``body``."""
    return Mode(response_headers=True, response_body=body)
