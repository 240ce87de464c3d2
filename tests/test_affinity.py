"""Session affinity: the pin cache, and open-model requests through the processor."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

from ext_proc.config import AffinitySettings, RoutingPreference, load_config_text
from ext_proc.routing.affinity import Pin, session_key
from ext_proc.routing.resolve import Resolution, RoutingTable, build_routing_table
from ext_proc.server.routing_stream import RoutingProcessor
from ext_proc.state.process import process_state, reset_process_state
from ext_proc.state.shared import LocalState
from tests.factories import config, provider
from tests.metrics_worker import chat_messages


def test_a_pin_round_trips_as_text() -> None:
    pin = Pin("openai/gpt-5", Resolution.ROUTER, "code")
    assert Pin.decode(pin.encode()) == pin
    assert Pin.decode(Pin("m/x", Resolution.DEFAULT, None).encode()) == Pin(
        "m/x", Resolution.DEFAULT, None
    )
    assert Pin.decode("garbage") is None


def test_session_keys_are_bounded() -> None:
    assert session_key("  conv-1 ") == "conv-1"
    assert session_key("   ") is None
    long = session_key("x" * 10_000)
    assert long is not None and long.startswith("sha256:") and len(long) < 80
    assert session_key("x" * 10_000) == long != session_key("x" * 9_999)
    # Plano's tenant_header scopes keys by tenant.
    assert session_key("conv-1", "acme") == "acme:conv-1" != session_key("conv-1", "other")


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
    # Pins are per process (no workers, no Redis here); each test starts with none.
    reset_process_state()
    yield
    reset_process_state()


def _pins() -> LocalState:
    state = process_state(None, 10_000)
    assert isinstance(state, LocalState)
    return state


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
    assert not _pins()._pins
    # Without a key nothing is pinned either.
    assert "x-archway-affinity" not in _route(table, None, None)


def test_a_pinned_router_decision_keeps_its_route() -> None:
    """What the preference router decided for the first turn serves the next ones,
    without asking it again (this is where the router's call is skipped)."""
    table = _table("openai/gpt-5", "anthropic/claude-sonnet-4-5")
    pin = Pin("anthropic/claude-sonnet-4-5", Resolution.ROUTER, "code")
    asyncio.run(_pins().claim_pin("conv-1", pin.encode(), ttl_s=60))
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
