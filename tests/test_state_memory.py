"""The in-memory conversation store: LRU and byte bounds, expiry, copies; and
the ``state_storage`` section that picks a store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from ext_proc.apis import WireAPI
from ext_proc.errors import GatewayError, error_body
from ext_proc.state import (
    StateStorageConfig,
    StateStorageError,
    open_store,
    parse_state_storage,
)
from ext_proc.state.memory import SWEEP_INTERVAL_S, MemoryStore

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def items(text: str) -> list[dict[str, Any]]:
    return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]


def not_found(store: MemoryStore, response_id: str) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        run(store.get(response_id))
    return caught.value


def test_put_then_get_returns_a_copy() -> None:
    store = MemoryStore()
    run(store.put("resp_1", items("café ☕"), 60))
    got = run(store.get("resp_1"))
    assert got == items("café ☕")
    got[0]["role"] = "assistant"
    assert run(store.get("resp_1")) == items("café ☕")


def test_unknown_id_is_a_404_in_the_responses_error_shape() -> None:
    error = not_found(MemoryStore(), "resp_missing")
    assert error.status == 404
    assert json.loads(error_body(WireAPI.OPENAI, error)) == {
        "error": {
            "message": "Previous response with id 'resp_missing' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    }


def test_entries_expire() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    run(store.put("resp_short", items("a"), 10))
    run(store.put("resp_long", items("b"), 100))
    clock.now += 10
    assert not_found(store, "resp_short").status == 404
    assert run(store.get("resp_long")) == items("b")
    assert len(store) == 1


def test_a_sweep_drops_expired_entries_nobody_asks_for() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    run(store.put("resp_old", items("a"), 1))
    clock.now += SWEEP_INTERVAL_S
    run(store.put("resp_new", items("b"), 1000))
    assert len(store) == 1
    assert store.size_bytes == len(json.dumps(items("b"), separators=(",", ":")))


def test_least_recently_used_goes_first_at_the_entry_bound() -> None:
    store = MemoryStore(max_entries=2)
    run(store.put("resp_a", items("a"), 60))
    run(store.put("resp_b", items("b"), 60))
    run(store.get("resp_a"))  # now b is the least recently used
    run(store.put("resp_c", items("c"), 60))
    assert not_found(store, "resp_b").status == 404
    assert run(store.get("resp_a")) == items("a")
    assert run(store.get("resp_c")) == items("c")


def test_the_byte_bound_holds() -> None:
    one = len(json.dumps(items("x" * 100), separators=(",", ":")).encode())
    store = MemoryStore(max_bytes=one * 3)
    for i in range(10):
        run(store.put(f"resp_{i}", items(f"{i}" * 100), 60))
        assert store.size_bytes <= one * 3
    assert len(store) == 3
    assert run(store.get("resp_9")) == items("9" * 100)


def test_replacing_an_entry_keeps_the_byte_count_exact() -> None:
    store = MemoryStore()
    run(store.put("resp_1", items("a" * 50), 60))
    run(store.put("resp_1", items("b"), 60))
    assert store.size_bytes == len(json.dumps(items("b"), separators=(",", ":")))


def test_a_conversation_larger_than_the_store_is_an_error_not_a_silent_drop() -> None:
    store = MemoryStore(max_bytes=64)
    with pytest.raises(StateStorageError, match="larger than the whole memory store"):
        run(store.put("resp_big", items("x" * 100), 60))
    assert len(store) == 0


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"type": "memory"}, StateStorageConfig("memory")),
        (
            {"type": "postgres", "connection_string": "postgresql://u:p@db:5432/plano"},
            StateStorageConfig("postgres", "postgresql://u:p@db:5432/plano"),
        ),
    ],
)
def test_plano_state_storage_section(section: dict[str, Any], expected: StateStorageConfig) -> None:
    assert parse_state_storage(section) == expected


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"type": "postgres"}, "needs a connection_string"),
        ({"type": "redis"}, "is not one of memory, postgres"),
        ({"type": "memory", "ttl": 3}, "unknown key 'ttl'"),
        ("memory", "must be a mapping"),
    ],
)
def test_bad_state_storage_sections_say_what_to_fix(section: object, message: str) -> None:
    with pytest.raises(StateStorageError, match=message):
        parse_state_storage(section)


def test_open_store_memory() -> None:
    async def scenario() -> list[dict[str, Any]]:
        store = await open_store(StateStorageConfig("memory"))
        await store.put("resp_1", items("a"), 60)
        got = await store.get("resp_1")
        await store.close()
        return got

    assert run(scenario()) == items("a")
