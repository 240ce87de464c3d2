"""A preference router whose answers the test decides: deterministic routing for
tests that are about everything around the model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from ext_proc.router import Route, RouteChoice, Turn
from ext_proc.router.service import ConfiguredRouter

ROUTE_NAMES = frozenset({"code generation", "creative writing"})


@dataclass
class ScriptedRouter:
    """Answers ``answer(conversation)``: a route, or an exception to raise. Waits
    ``delay_s`` first, as a slow model would."""

    answer: Callable[[tuple[Turn, ...]], str | Exception] = lambda _: "creative writing"
    delay_s: float = 0.0
    calls: list[tuple[Turn, ...]] = field(default_factory=list)
    routes_seen: list[tuple[Route, ...] | None] = field(default_factory=list)
    closed: bool = False

    async def choose(
        self, conversation: tuple[Turn, ...], routes: tuple[Route, ...] | None = None
    ) -> RouteChoice:
        self.calls.append(conversation)
        self.routes_seen.append(routes)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        result = self.answer(conversation)
        if isinstance(result, Exception):
            raise result
        return RouteChoice(result)

    async def close(self) -> None:
        self.closed = True


def by_keyword(conversation: tuple[Turn, ...]) -> str | Exception:
    """``code`` in the last message -> code generation; ``story`` -> creative
    writing; ``boom`` -> an error; ``slow`` is handled by delay; else other."""
    text = conversation[-1].content
    if "boom" in text:
        return RuntimeError("backend exploded")
    if "code" in text:
        return "code generation"
    if "story" in text:
        return "creative writing"
    if "unknown" in text:
        return "astrology"
    return "other"


def configured(backend: ScriptedRouter, *, timeout_s: float = 1.0) -> ConfiguredRouter:
    return ConfiguredRouter(
        backend=backend,
        route_names=ROUTE_NAMES,
        count_tokens=lambda text: len(text.split()),
        timeout_s=timeout_s,
    )
