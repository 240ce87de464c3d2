"""Session affinity: the pin cache, and open-model requests through the processor."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

from ext_proc.config import AffinitySettings, RoutingPreference, load_config_text
from ext_proc.routing import affinity
from ext_proc.routing.affinity import AffinityCache, Pin, session_key
from ext_proc.routing.resolve import Resolution, RoutingTable, build_routing_table
from ext_proc.server.routing_stream import RoutingProcessor
from tests.factories import config, provider
from tests.metrics_worker import chat_messages


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pin(model: str) -> Pin:
    return Pin(model, Resolution.DEFAULT, None)


def test_a_pin_lasts_its_ttl() -> None:
    clock = Clock()
    cache = AffinityCache(ttl_s=600, max_entries=10, clock=clock)
    cache.put("a", _pin("openai/gpt-5"))
    clock.now += 599
    assert cache.get("a") == _pin("openai/gpt-5")
    clock.now += 1
    assert cache.get("a") is None
    assert len(cache) == 0


def test_reuse_does_not_extend_a_pin() -> None:
    clock = Clock()
    cache = AffinityCache(ttl_s=10, max_entries=10, clock=clock)
    cache.put("a", _pin("openai/gpt-5"))
    clock.now += 9
    assert cache.get("a") is not None
    clock.now += 2
    assert cache.get("a") is None


def test_the_least_recently_used_pin_goes_first() -> None:
    cache = AffinityCache(ttl_s=600, max_entries=2, clock=Clock())
    cache.put("a", _pin("m/a"))
    cache.put("b", _pin("m/b"))
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("c", _pin("m/c"))
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    cache.resize(600, 1)
    assert len(cache) == 1 and cache.get("c") is not None


def test_session_keys_are_bounded() -> None:
    assert session_key("  conv-1 ") == "conv-1"
    assert session_key("   ") is None
    long = session_key("x" * 10_000)
    assert long is not None and long.startswith("sha256:") and len(long) < 80
    assert session_key("x" * 10_000) == long != session_key("x" * 9_999)


def test_the_process_cache_follows_the_config() -> None:
    pins = affinity.process_pins(AffinitySettings(ttl_s=30, max_entries=5))
    assert (pins.ttl_s, pins.max_entries) == (30, 5)
    again = affinity.process_pins(AffinitySettings(ttl_s=60, max_entries=7))
    assert again is pins and (pins.ttl_s, pins.max_entries) == (60, 7)


def test_plano_routing_settings_size_the_cache() -> None:
    base = "llm_providers: [{model: openai/gpt-5, access_key: k}]\n"
    assert load_config_text(base).affinity == AffinitySettings(600, 10_000)
    loaded = load_config_text(
        base + "routing: {session_ttl_seconds: 3600, session_max_entries: 50, model: x}\n"
    )
    assert loaded.affinity == AffinitySettings(3600, 50)
    assert any("routing.model" in w and "router.model_path" in w for w in loaded.warnings)
    assert not any("session_" in w for w in loaded.warnings)


# --- through the processor ---------------------------------------------------------

PREFERENCES = (RoutingPreference("code", "writing code", ("anthropic/claude-sonnet-4-5",)),)


def _table(*models: str, default: str = "openai/gpt-5") -> RoutingTable:
    return build_routing_table(
        config(
            *(provider(m, default=m == default) for m in models),
            aliases={"fast": "gpt-5"} if "openai/gpt-5" in models else None,
            preferences=PREFERENCES if "anthropic/claude-sonnet-4-5" in models else (),
        )
    )


@pytest.fixture(autouse=True)
def fresh_pins() -> Iterator[None]:
    # Pins are per process; each test starts with none.
    affinity._process_pins = None
    yield
    affinity._process_pins = None


def _route(table: RoutingTable, model: str | None, key: str | None) -> dict[str, str]:
    async def drive() -> ProcessingResponse:
        processor = RoutingProcessor(table)
        messages = chat_messages(model)
        if key is not None:
            header = messages[0].request_headers.headers.headers.add()
            header.key, header.raw_value = "x-model-affinity", key.encode()
        response = ProcessingResponse()
        for message in messages:
            response = await processor.handle(message)
        return response

    response = asyncio.run(drive())
    assert response.WhichOneof("response") == "request_body", response
    mutation = response.request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def test_an_open_model_session_is_pinned_then_reused() -> None:
    table = _table("openai/gpt-5", "mistral/mistral-large")
    first = _route(table, None, "conv-1")
    assert first["x-archway-affinity"] == "new"
    assert first["x-archway-model"] == "openai/gpt-5"
    second = _route(table, "auto", "conv-1")
    assert second["x-archway-affinity"] == "pinned"
    assert second["x-archway-resolution"] == "default"
    # Another session is decided on its own.
    assert _route(table, None, "conv-2")["x-archway-affinity"] == "new"


def test_explicit_models_and_aliases_are_never_pinned() -> None:
    table = _table("openai/gpt-5", "mistral/mistral-large")
    for model in ("mistral/mistral-large", "fast"):
        headers = _route(table, model, "conv-1")
        assert "x-archway-affinity" not in headers
    assert affinity._process_pins is None or len(affinity._process_pins) == 0
    # Without a key nothing is pinned either.
    assert "x-archway-affinity" not in _route(table, None, None)


def test_a_pinned_router_decision_keeps_its_route() -> None:
    """What the preference router decided for the first turn serves the next ones,
    without asking it again (this is where the router's call is skipped)."""
    table = _table("openai/gpt-5", "anthropic/claude-sonnet-4-5")
    pins = affinity.process_pins(table.config.affinity)
    pins.put("conv-1", Pin("anthropic/claude-sonnet-4-5", Resolution.ROUTER, "code"))
    headers = _route(table, None, "conv-1")
    assert headers["x-archway-affinity"] == "pinned"
    assert headers["x-archway-model"] == "anthropic/claude-sonnet-4-5"
    assert headers["x-archway-resolution"] == "router"
    assert headers["x-archway-route"] == "code"
    assert headers["x-archway-translate"] == "openai-to-anthropic"


def test_a_pin_stays_while_its_model_is_configured_and_goes_when_it_is_not() -> None:
    before = _table("openai/gpt-5", "mistral/mistral-large")
    assert _route(before, None, "conv-1")["x-archway-model"] == "openai/gpt-5"
    # A reload that changes the default keeps the conversation where it was...
    moved = _table("openai/gpt-5", "mistral/mistral-large", default="mistral/mistral-large")
    kept = _route(moved, None, "conv-1")
    assert kept["x-archway-affinity"] == "pinned" and kept["x-archway-model"] == "openai/gpt-5"
    # ...and one that removes the pinned model re-decides and pins anew.
    removed = _table("mistral/mistral-large", default="mistral/mistral-large")
    after = _route(removed, None, "conv-1")
    assert after["x-archway-affinity"] == "new"
    assert after["x-archway-model"] == "mistral/mistral-large"
    assert _route(removed, None, "conv-1")["x-archway-affinity"] == "pinned"


def test_a_bad_body_with_a_key_is_still_a_clean_400() -> None:
    table = _table("openai/gpt-5")

    async def drive() -> ProcessingResponse:
        processor = RoutingProcessor(table)
        messages = chat_messages(None)
        header = messages[0].request_headers.headers.headers.add()
        header.key, header.raw_value = "x-model-affinity", b"conv-1"
        messages[1].request_body.body = b"{not json"
        await processor.handle(messages[0])
        return await processor.handle(messages[1])

    response = asyncio.run(drive())
    assert response.immediate_response.status.code == 400
    assert json.loads(response.immediate_response.body)["error"]["code"] == "invalid_json"
