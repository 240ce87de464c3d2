"""The PostgreSQL conversation store against a real PostgreSQL started for
these tests (see ``tests/postgres_server.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import psycopg
import pytest

from ext_proc.errors import GatewayError
from ext_proc.state import StateStorageConfig, StateStorageError, open_store
from ext_proc.state import postgres as postgres_module
from ext_proc.state.postgres import DEFAULT_TABLE, PostgresStore
from tests.postgres_server import running_postgres

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    # No skip: a machine without PostgreSQL fails here, saying how to install it.
    with running_postgres() as connection_string:
        yield connection_string


def items(text: str) -> list[dict[str, Any]]:
    return [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "f",
            "arguments": '{"a":1}',
        },
    ]


def rows(dsn: str, table: str = DEFAULT_TABLE) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


def test_round_trip_survives_a_new_store(dsn: str) -> None:
    async def scenario() -> list[dict[str, Any]]:
        first = await PostgresStore.connect(dsn)
        await first.put("resp_1", items("café ☕ \u2028 \u0000"), 3600)
        await first.close()
        # Another worker, or the gateway after a restart.
        second = await PostgresStore.connect(dsn)
        try:
            return await second.get("resp_1")
        finally:
            await second.close()

    assert run(scenario()) == items("café ☕ \u2028 \u0000")


def test_put_replaces_and_unknown_is_404(dsn: str) -> None:
    async def scenario() -> GatewayError:
        store = await PostgresStore.connect(dsn)
        try:
            await store.put("resp_2", items("old"), 3600)
            await store.put("resp_2", items("new"), 3600)
            assert await store.get("resp_2") == items("new")
            with pytest.raises(GatewayError) as caught:
                await store.get("resp_nope")
            return caught.value
        finally:
            await store.close()

    error = run(scenario())
    assert (error.status, error.code, error.param) == (
        404,
        "previous_response_not_found",
        "previous_response_id",
    )


def test_expired_rows_are_not_returned_and_get_purged(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_module, "PURGE_EVERY_PUTS", 3)

    async def scenario() -> None:
        store = await PostgresStore.connect(dsn, table="expiry_test")
        try:
            await store.put("resp_gone", items("a"), 0)
            await store.put("resp_kept", items("b"), 3600)
            with pytest.raises(GatewayError):
                await store.get("resp_gone")
            assert rows(dsn, "expiry_test") == 2
            await store.put("resp_third", items("c"), 3600)  # the third put purges
            assert rows(dsn, "expiry_test") == 2
            assert await store.get("resp_kept") == items("b")
        finally:
            await store.close()

    run(scenario())


def test_workers_starting_together_create_the_table_once(dsn: str) -> None:
    async def scenario() -> None:
        stores = await asyncio.gather(
            *(PostgresStore.connect(dsn, table="race_test") for _ in range(4))
        )
        try:
            await asyncio.gather(
                *(s.put(f"resp_{i}", items(str(i)), 60) for i, s in enumerate(stores))
            )
            got = await asyncio.gather(*(stores[0].get(f"resp_{i}") for i in range(4)))
            assert got == [items(str(i)) for i in range(4)]
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    run(scenario())


def test_open_store_from_the_plano_section(dsn: str) -> None:
    async def scenario() -> list[dict[str, Any]]:
        store = await open_store(StateStorageConfig("postgres", dsn))
        try:
            await store.put("resp_cfg", items("x"), 60)
            return await store.get("resp_cfg")
        finally:
            await store.close()

    assert run(scenario()) == items("x")


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    with pytest.raises(StateStorageError) as caught:
        run(PostgresStore.connect("postgresql://u:s3cret@127.0.0.1:1/db", timeout_s=2))
    message = str(caught.value)
    assert "127.0.0.1:1/db" in message and "check connection_string" in message
    assert "s3cret" not in message and "\n" not in message


def test_a_malformed_connection_string_is_not_echoed() -> None:
    with pytest.raises(StateStorageError) as caught:
        run(PostgresStore.connect("host=db password=s3cret oops"))
    assert "s3cret" not in str(caught.value)
    assert "not a PostgreSQL connection string" in str(caught.value)


def test_a_bad_table_name_is_refused(dsn: str) -> None:
    with pytest.raises(StateStorageError, match="table name"):
        run(PostgresStore.connect(dsn, table="x; DROP TABLE y"))


def test_a_server_that_goes_away_is_a_503_not_a_crash() -> None:
    async def scenario() -> GatewayError:
        with running_postgres() as short_lived:
            store = await PostgresStore.connect(short_lived, timeout_s=2)
            await store.put("resp_1", items("a"), 60)
        try:
            with pytest.raises(GatewayError) as caught:
                await store.get("resp_1")
            with pytest.raises(GatewayError):
                await store.put("resp_2", items("b"), 60)
            return caught.value
        finally:
            await store.close()

    error = run(scenario())
    assert error.status == 503 and error.code == "state_storage_unavailable"
