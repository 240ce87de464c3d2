"""The decision rules around any backend: routes, fallbacks, timeouts, never a failure."""

from __future__ import annotations

import asyncio

import pytest

from ext_proc.apis import WireAPI
from ext_proc.router import ROUTE_ERROR, ROUTE_OTHER, ROUTE_TIMEOUT, Route, RouteChoice, Turn
from tests.scripted_router import ScriptedRouter, by_keyword, configured


def decide(router: ScriptedRouter, text: str, *, timeout_s: float = 1.0) -> str:
    body = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]}
    choice = asyncio.run(configured(router, timeout_s=timeout_s).decide(body, WireAPI.OPENAI))
    return choice.route


@pytest.mark.parametrize(
    ("text", "route"),
    [
        ("write code please", "code generation"),
        ("tell a story", "creative writing"),
        ("what is the time", ROUTE_OTHER),
        ("unknown route please", ROUTE_OTHER),
        ("boom", ROUTE_ERROR),
    ],
)
def test_backend_answers_map_to_routes_or_reasons(text: str, route: str) -> None:
    assert decide(ScriptedRouter(by_keyword), text) == route


def test_backend_sees_the_selected_conversation_only() -> None:
    router = ScriptedRouter(by_keyword)
    decide(router, "write code")
    assert router.calls == [(Turn("user", "write code"),)]


class _Unanswering(ScriptedRouter):
    """Never answers on its own; says whether the call was abandoned (cancelled)."""

    cancelled: bool = False

    async def choose(
        self, conversation: tuple[Turn, ...], routes: tuple[Route, ...] | None = None
    ) -> RouteChoice:
        self.calls.append(conversation)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")


def test_slow_backend_times_out_to_the_default() -> None:
    router = _Unanswering(by_keyword)
    body = {"messages": [{"role": "user", "content": "write code"}]}

    async def run() -> str:
        decision = configured(router, timeout_s=0.05).decide(body, WireAPI.OPENAI)
        # Only a backstop, far above the router's timeout: without one, a broken
        # timeout would hang until pytest-timeout.
        return (await asyncio.wait_for(decision, 30)).route

    assert asyncio.run(run()) == ROUTE_TIMEOUT
    assert router.calls and router.cancelled, "the backend's call was not abandoned"


def test_no_conversation_text_never_asks_the_backend() -> None:
    router = ScriptedRouter(by_keyword)
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    choice = asyncio.run(configured(router).decide(body, WireAPI.OPENAI))
    assert choice.route == ROUTE_OTHER and router.calls == []


def test_a_failing_token_counter_is_an_error_not_an_exception() -> None:
    router = configured(ScriptedRouter(by_keyword))

    def broken(text: str) -> int:
        raise RuntimeError("tokenizer gone")

    router.count_tokens = broken
    # Longer than the token budget in bytes, so the counter is needed.
    body = {"messages": [{"role": "user", "content": "write code " * 1000}]}
    assert asyncio.run(router.decide(body, WireAPI.OPENAI)).route == ROUTE_ERROR
