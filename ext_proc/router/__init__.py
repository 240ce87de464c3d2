"""Preference routing: pick a configured route for a conversation whose client
left the model open.

The shared vocabulary lives here. Backends (Arch-Router on a CTranslate2
generator, a sentence encoder) implement ``PreferenceRouter``. The routing
stream awaits ``ConfiguredRouter.decide`` (``router.service``) when
``routing.decide.look`` says a request asks for it, and ``routing.decide.decide``
turns the ``RouteChoice`` into the request's model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ROUTE_ERROR",
    "ROUTE_OTHER",
    "ROUTE_TIMEOUT",
    "PreferenceRouter",
    "Route",
    "RouteChoice",
    "Turn",
]

ROUTE_OTHER = "other"
"""The router saw no configured route that fits: the default model serves."""
ROUTE_ERROR = "error"
"""The router failed; the default model serves and the request goes on."""
ROUTE_TIMEOUT = "timeout"
"""The router took too long; the default model serves and the request goes on."""


@dataclass(frozen=True)
class Route:
    """A routing preference as the router sees it, in config order."""

    name: str
    description: str
    examples: tuple[str, ...] = ()
    """Example utterances (an Archway extension; Plano configs have none)."""


@dataclass(frozen=True)
class Turn:
    """One message of the conversation the router reads: text only."""

    role: str
    """``user`` or ``assistant``."""
    content: str


@dataclass(frozen=True)
class RouteChoice:
    route: str
    """A configured route name, or ``other``, ``error`` or ``timeout``."""
    score: float | None = None
    """The backend's confidence, where it has one (cosine similarity)."""


class PreferenceRouter(Protocol):
    """A backend that maps a conversation to one of its configured routes, or to
    one of ``routes`` when a request brings its own (Plano's per-request
    ``routing_preferences``)."""

    async def choose(
        self, conversation: tuple[Turn, ...], routes: tuple[Route, ...] | None = None
    ) -> RouteChoice: ...

    async def close(self) -> None: ...
