"""Session pins and token counters: in memory, in a file shared by processes,
in a real Redis, and failing open when the store is away."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ext_proc.state.redis_state import RedisState
from ext_proc.state.shared import FailOpen, FileState, LocalState, SharedState
from tests.redis_server import running_redis


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


def _stores(kind: str, tmp_path: Path, redis_url: str | None, clock: Clock) -> SharedState:
    if kind == "memory":
        return LocalState(clock=clock)
    if kind == "file":
        return FileState(tmp_path / "state.sqlite", clock=clock)
    assert redis_url is not None
    return RedisState(redis_url, clock=clock)


@pytest.fixture(params=["memory", "file", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_pins_and_counters(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url") if store_kind == "redis" else None
    # Real time: Redis expires counter keys at the window's end by its own clock.
    clock = Clock(time.time())

    async def run() -> None:
        store = _stores(store_kind, tmp_path, url, clock)
        try:
            key = f"session-{tmp_path.name}"
            assert await store.get_pin(key) is None
            assert await store.claim_pin(key, "openai/a", ttl_s=60) is None
            # The second claim loses and learns the first one's value.
            assert await store.claim_pin(key, "openai/b", ttl_s=60) == "openai/a"
            assert await store.get_pin(key) == "openai/a"
            await store.drop_pin(key)
            assert await store.claim_pin(key, "openai/c", ttl_s=60) is None
            assert await store.get_pin(key) == "openai/c"

            counter = f"client-{tmp_path.name}"
            first = await store.admit(counter, 60, limit=100, window_s=60)
            assert first.allowed and first.total == 60
            assert 0 < first.retry_after_s <= 60
            refused = await store.admit(counter, 50, limit=100, window_s=60)
            assert not refused.allowed and refused.total == 60
            # Output tokens counted after the answer push past the limit.
            await store.add(counter, 45, window_s=60)
            assert not (await store.admit(counter, 1, limit=100, window_s=60)).allowed
            # The next window starts from zero.
            clock.now += 60
            again = await store.admit(counter, 100, limit=100, window_s=60)
            assert again.allowed and again.total == 100
        finally:
            await store.close()

    asyncio.run(run())


def test_local_pins_expire_and_stay_bounded() -> None:
    clock = Clock()

    async def run() -> None:
        store = LocalState(max_pins=2, clock=clock)
        await store.claim_pin("a", "1", ttl_s=10)
        clock.now += 11
        assert await store.get_pin("a") is None
        for key in ("x", "y", "z"):
            await store.claim_pin(key, key, ttl_s=10)
        assert await store.get_pin("x") is None
        assert await store.get_pin("z") == "z"

    asyncio.run(run())


def _claim_in_process(path: str, key: str, value: str) -> str | None:
    async def run() -> str | None:
        store = FileState(path)
        try:
            return await store.claim_pin(key, value, ttl_s=60)
        finally:
            await store.close()

    return asyncio.run(run())


def _admit_in_process(path: str, rounds: int) -> int:
    async def run() -> int:
        store = FileState(path, busy_timeout_ms=5000)
        allowed = 0
        try:
            for _ in range(rounds):
                if (await store.admit("shared", 1, limit=150, window_s=3600)).allowed:
                    allowed += 1
        finally:
            await store.close()
        return allowed

    return asyncio.run(run())


def test_file_state_is_atomic_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite")
    FileState(path)  # creates the schema before the race
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        claims = pool.starmap(_claim_in_process, [(path, "k", f"v{i}") for i in range(8)])
        admitted = pool.starmap(_admit_in_process, [(path, 100)] * 4)
    # Exactly one process made the pin; every other one was told its value.
    assert claims.count(None) == 1
    winner = f"v{claims.index(None)}"
    assert all(c == winner for c in claims if c is not None)
    # 400 attempts at one token each against a limit of 150: exactly 150 got in.
    assert sum(admitted) == 150


def test_redis_admission_is_atomic_across_clients(redis_url: str) -> None:
    async def one_replica() -> int:
        # Generous timeouts: this checks atomicity, not speed, on a loaded machine.
        store = RedisState(redis_url, timeout_s=10)
        try:
            allowed = 0
            for _ in range(100):
                allowed += (await store.admit("race-redis", 1, limit=150, window_s=3600)).allowed
            return allowed
        finally:
            await store.close()

    async def run() -> int:
        return sum(await asyncio.gather(*(one_replica() for _ in range(4))))

    assert asyncio.run(run()) == 150


def test_fail_open_when_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[tuple[str, str]] = []
    clock = Clock(0.0)

    async def run() -> None:
        with running_redis() as url:
            pass  # stopped: nothing listens on its port any more
        store = FailOpen(
            RedisState(url),
            LocalState(),
            on_error=lambda kind, op: errors.append((kind, op)),
            clock=clock,
        )
        try:
            admission = await store.admit("c", 10**9, limit=1, window_s=60)
            assert admission.allowed
            # Pins fall back to this process's memory.
            assert await store.claim_pin("s", "m1", ttl_s=60) is None
            assert await store.claim_pin("s", "m2", ttl_s=60) == "m1"
            await store.add("c", 5, window_s=60)
        finally:
            await store.close()

    with caplog.at_level("WARNING", logger="archway.state"):
        asyncio.run(run())
    # One failure, then the store is left alone for a second: one error, one log line.
    assert errors == [("redis", "admit")]
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
    assert "redis://" not in caplog.text
