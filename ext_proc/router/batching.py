"""Micro-batching: requests that arrive together share one model call.

A generator call has a fixed cost per step whatever the batch size, so on a GPU
eight conversations decided in one call cost little more than one. Requests wait
at most ``max_wait_s`` for company; while a batch runs, new requests queue and go
together in the next. Calls run on one worker thread, off the event loop, one at
a time (the model is not re-entrant and a second call would only compete for the
same cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["BatcherClosedError", "MicroBatcher"]

log = logging.getLogger("archway.router")

Item = TypeVar("Item")
Result = TypeVar("Result")


class BatcherClosedError(RuntimeError):
    pass


class MicroBatcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        name: str = "archway-router",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_wait_s = max(0.0, max_wait_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.batch_sizes: list[int] = []
        """Sizes of the batches run so far (for tests and the benchmark)."""

    async def submit(self, item: Item) -> Result:
        """``item``'s result, from a batch run with whatever else is waiting."""
        if self._closed:
            raise BatcherClosedError("the router is shut down")
        queue = self._ensure_worker()
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await queue.put((item, future))
        # A caller that gives up (a timeout) cancels the future; the worker skips it.
        return await future

    async def close(self) -> None:
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if self._queue is not None:
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                if not future.done():
                    future.set_exception(BatcherClosedError("the router is shut down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _ensure_worker(self) -> asyncio.Queue[tuple[Item, asyncio.Future[Result]]]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._loop is not loop:
            # A queue belongs to one event loop; a new loop (tests, a restart) gets its own.
            self._loop = loop
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._work(self._queue))
        return self._queue

    async def _work(self, queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self._max_wait_s
            while len(batch) < self._max_batch_size:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            live = [(item, future) for item, future in batch if not future.done()]
            if not live:
                continue
            self.batch_sizes.append(len(live))
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [item for item, _ in live]
                )
                if len(results) != len(live):
                    raise RuntimeError(f"a batch of {len(live)} gave {len(results)} results")
            except Exception as exc:
                log.warning("router batch of %d failed: %s", len(live), exc)
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
