"""The one interface every translator has, and what travels from request to response.

A ``Translator`` serves clients of one API from providers of another: its
``request`` turns the client's body into the provider's, and ``response``,
``stream`` and ``error`` turn what the provider answers into what the client
expects. The request is translated in the routing stream; the response in a
later, separate ext_proc stream, which learns what it needs from the
``TranslationContext`` the request side wrote into ``TRANSLATE_HEADER``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ext_proc.apis import Dialect, WireAPI

__all__ = ["StreamTranslator", "TranslationContext", "Translator"]


class StreamTranslator(Protocol):
    """One response stream's translation: upstream SSE bytes in, client SSE bytes out."""

    def feed(self, chunk: bytes) -> bytes:
        """The client's bytes for one upstream body chunk (possibly empty)."""
        ...

    def finish(self) -> bytes:
        """The client's last bytes, at the end of the upstream stream."""
        ...


@dataclass(frozen=True, slots=True)
class TranslationContext:
    """What the response side needs to know about a translated request."""

    client: WireAPI
    provider: WireAPI
    state: str = ""
    """What the translator's request side tells its response side, in its own
    words, as header-safe text; empty when there is nothing to tell. An OpenAI
    client's wish for usage in its stream; a Responses client's response id and
    the request fields its Response repeats."""

    @property
    def pair(self) -> str:
        """``client-to-provider``, as metrics and traces name a translation."""
        return f"{self.client.value}-to-{self.provider.value}"

    def header_value(self) -> str:
        return f"{self.pair};{self.state}" if self.state else self.pair


class Translator(Protocol):
    """Clients of ``client``'s API served by a provider of ``provider``'s.

    Stateless: one instance serves every request of its pair. Pure: no
    protobuf, no I/O. A field the provider's API cannot honour is refused with a
    ``GatewayError`` (400) naming it, never dropped.
    """

    @property
    def client(self) -> WireAPI: ...

    @property
    def provider(self) -> WireAPI: ...

    def request(
        self, body: Mapping[str, Any], dialect: Dialect
    ) -> tuple[dict[str, Any], TranslationContext]:
        """The provider's request body for the client's (``model`` already the
        provider's), and the context its response will need."""
        ...

    def response(
        self, body: Mapping[str, Any], context: TranslationContext, *, created: int
    ) -> dict[str, Any]:
        """A whole successful (2xx) JSON response, in the client's API.
        ``created`` is the time the response began, for APIs that stamp it."""
        ...

    def stream(self, context: TranslationContext, *, created: int) -> StreamTranslator:
        """A new translator for one streamed (SSE) response."""
        ...

    def error(self, status: int, body: bytes) -> bytes:
        """An error body (any status >= 300) in the client's error shape; the
        status itself is kept."""
        ...
