"""Micro-batching: concurrent requests share one model call, off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ext_proc.router.batching import BatcherClosedError, MicroBatcher


def test_concurrent_submits_run_as_one_batch_off_the_loop() -> None:
    threads: list[str] = []

    def run(items: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        time.sleep(0.05)
        return [i * 10 for i in items]

    async def main() -> tuple[list[int], list[int]]:
        batcher = MicroBatcher(run, max_batch_size=8, max_wait_s=0.02)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        await batcher.close()
        return list(results), batcher.batch_sizes

    results, sizes = asyncio.run(main())
    assert results == [0, 10, 20, 30, 40]
    assert sizes == [5]
    assert threads and all(name.startswith("archway-router") for name in threads)


def test_batches_are_bounded_and_queue_while_one_runs() -> None:
    def run(items: list[int]) -> list[int]:
        time.sleep(0.02)
        return items

    async def main() -> list[int]:
        batcher = MicroBatcher(run, max_batch_size=3, max_wait_s=0.01)
        await asyncio.gather(*(batcher.submit(i) for i in range(7)))
        await batcher.close()
        return batcher.batch_sizes

    assert asyncio.run(main()) == [3, 3, 1]


def test_requests_that_gave_up_are_not_run() -> None:
    seen: list[list[str]] = []
    gate = threading.Event()

    def run(items: list[str]) -> list[str]:
        seen.append(items)
        gate.wait(2)
        return items

    async def main() -> None:
        batcher = MicroBatcher(run, max_batch_size=1, max_wait_s=0)
        first = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(0.05)  # "first" is now running
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit("abandoned"), 0.05)
        gate.set()
        assert await first == "first"
        assert await batcher.submit("next") == "next"
        await batcher.close()

    asyncio.run(main())
    assert seen == [["first"], ["next"]]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    def run(items: list[str]) -> list[str]:
        if "bad" in items:
            raise RuntimeError("model error")
        return items

    async def main() -> None:
        batcher = MicroBatcher(run, max_batch_size=1, max_wait_s=0)
        with pytest.raises(RuntimeError, match="model error"):
            await batcher.submit("bad")
        assert await batcher.submit("good") == "good"
        await batcher.close()
        with pytest.raises(BatcherClosedError):
            await batcher.submit("late")

    asyncio.run(main())
