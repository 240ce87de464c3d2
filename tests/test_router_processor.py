"""The body phase asks the preference router only for open models, and routing
trouble always ends at the default model with headers that say why."""

from __future__ import annotations

import asyncio
import json

import pytest

from ext_proc.config import RoutingPreference
from ext_proc.routing.resolve import build_routing_table
from ext_proc.server.routing_stream import RoutingProcessor
from tests.factories import config, provider
from tests.scripted_router import ScriptedRouter, by_keyword, configured
from tests.test_processor import body_msg, headers_msg, immediate, mutation

TABLE = build_routing_table(
    config(
        provider("openai/gpt-5.2", default=True),
        provider("openai/gpt-5"),
        provider("anthropic/claude-sonnet-4-5"),
        aliases={"fast-model": "gpt-5.2"},
        preferences=(
            RoutingPreference("code generation", "writing new code", ("openai/gpt-5",)),
            RoutingPreference(
                "creative writing", "stories and poems", ("anthropic/claude-sonnet-4-5",)
            ),
        ),
    )
)


def run(backend: ScriptedRouter, body: dict, path: str = "/v1/chat/completions", **kw: float):
    async def go():
        processor = RoutingProcessor(TABLE, configured(backend, **kw))
        await processor.handle(headers_msg("POST", path))
        return await processor.handle(body_msg(body))

    return asyncio.run(go())


def ask(text: str, **extra: object) -> dict:
    return {"messages": [{"role": "user", "content": text}], **extra}


@pytest.mark.parametrize("model", [None, "", "auto", " AUTO "])
def test_open_model_is_routed_by_the_router(model: str | None) -> None:
    body = ask("write code for me") if model is None else ask("write code for me", model=model)
    resp = run(ScriptedRouter(by_keyword), body)
    sets, _ = mutation(resp, "request_body")
    assert sets["x-archway-resolution"] == "router"
    assert sets["x-archway-route"] == "code generation"
    assert sets["x-archway-model"] == "openai/gpt-5"
    assert json.loads(resp.request_body.response.body_mutation.body)["model"] == "gpt-5"


def test_anthropic_messages_body_is_routed_natively() -> None:
    body = {
        "max_tokens": 10,
        "system": "be code-like",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a story please"}]}],
    }
    backend = ScriptedRouter(by_keyword)
    sets, _ = mutation(run(backend, body, "/v1/messages"), "request_body")
    assert sets["x-archway-route"] == "creative writing"
    assert sets["x-archway-model"] == "anthropic/claude-sonnet-4-5"
    assert sets[":path"] == "/v1/messages"
    assert "code-like" not in backend.calls[0][0].content


@pytest.mark.parametrize(
    ("text", "delay", "route"),
    [
        ("what time is it", 0.0, "other"),
        ("an unknown route", 0.0, "other"),
        ("boom", 0.0, "error"),
        ("write code", 5.0, "timeout"),
    ],
)
def test_routing_trouble_goes_to_the_default_and_says_why(
    text: str, delay: float, route: str
) -> None:
    resp = run(ScriptedRouter(by_keyword, delay_s=delay), ask(text), timeout_s=0.05)
    sets, _ = mutation(resp, "request_body")
    assert sets["x-archway-resolution"] == "default"
    assert sets["x-archway-route"] == route
    assert sets["x-archway-model"] == "openai/gpt-5.2"


@pytest.mark.parametrize("model", ["openai/gpt-5", "gpt-5.2", "fast-model"])
def test_explicit_models_and_aliases_never_call_the_router(model: str) -> None:
    backend = ScriptedRouter(by_keyword)
    sets, _ = mutation(run(backend, ask("write code", model=model)), "request_body")
    assert backend.calls == []
    assert sets["x-archway-resolution"] in ("direct", "alias")
    assert "x-archway-route" not in sets


def test_bad_bodies_are_rejected_before_the_router() -> None:
    backend = ScriptedRouter(by_keyword)
    status, body = immediate(run(backend, {"model": 3, "messages": []}))
    assert status == 400 and body["error"]["code"] == "invalid_model"
    assert backend.calls == []
