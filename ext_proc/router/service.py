"""A configured preference router as the processor uses it: select the
conversation, ask the backend within the timeout, and never fail the request.

Routing trouble is never the user's problem: a timeout, a backend error or an
answer that names no configured route all come back as a ``RouteChoice`` that
sends the request to the default model and says why (``timeout``, ``error``,
``other``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ext_proc.apis import WireAPI
from ext_proc.router import (
    ROUTE_ERROR,
    ROUTE_OTHER,
    ROUTE_TIMEOUT,
    PreferenceRouter,
    Route,
    RouteChoice,
)
from ext_proc.router.conversation import select_conversation

__all__ = ["ConfiguredRouter"]

log = logging.getLogger("archway.router")

_REASONS = frozenset({ROUTE_OTHER, ROUTE_ERROR, ROUTE_TIMEOUT})


@dataclass
class ConfiguredRouter:
    backend: PreferenceRouter
    route_names: Collection[str]
    count_tokens: Callable[[str], int]
    """Counts a message as the backend will see it (its own tokenizer)."""
    timeout_s: float = 5.0
    max_messages: int = 16
    token_budget: int = 2048

    async def decide(
        self, body: Mapping[str, Any], api: WireAPI, routes: tuple[Route, ...] | None = None
    ) -> RouteChoice:
        """The route for this request body, among ``routes`` when the request
        brings its own; never raises."""
        try:
            # Tokenizing (and trimming) up to a few MiB of messages takes milliseconds:
            # a worker thread keeps them off the event loop that serves every stream.
            conversation = await asyncio.to_thread(
                select_conversation,
                body,
                api,
                count_tokens=self.count_tokens,
                max_messages=self.max_messages,
                token_budget=self.token_budget,
            )
        except Exception:
            log.exception("selecting the conversation failed")
            return RouteChoice(ROUTE_ERROR)
        if not conversation:
            # Nothing to read (an image-only or empty request): no route can fit.
            return RouteChoice(ROUTE_OTHER)
        try:
            choice = await asyncio.wait_for(
                self.backend.choose(conversation, routes), self.timeout_s
            )
        except TimeoutError:
            log.warning("the preference router took over %.3gs; using the default", self.timeout_s)
            return RouteChoice(ROUTE_TIMEOUT)
        except Exception as exc:
            log.warning("the preference router failed (%s); using the default", exc)
            return RouteChoice(ROUTE_ERROR)
        names = self.route_names if routes is None else {r.name for r in routes}
        if choice.route not in names and choice.route not in _REASONS:
            return RouteChoice(ROUTE_OTHER, choice.score)
        return choice

    async def close(self) -> None:
        await self.backend.close()
