"""Running a stream's handler eagerly, on Python 3.11 as 3.12's eager tasks do."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from collections.abc import Coroutine

__all__ = ["start_task"]

log = logging.getLogger("archway.h2grpc")


def start_task(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[object, object, None]
) -> asyncio.Task[None] | None:
    """Runs ``coro`` at once, inside buffer_updated, until it first waits, and
    only then makes it a task; ``None`` when it finished without waiting. The
    ext_proc phases never wait (a router call does), so the answer joins the
    same write as everything else this read produced, with no trip through the
    event loop: one loop iteration less per message. Python 3.12's eager tasks
    do this natively; this is their first step for 3.11."""
    context = contextvars.copy_context()
    try:
        waiting_on = context.run(coro.send, None)
    except StopIteration:
        return None
    except Exception:
        log.exception("ext_proc stream task failed")
        return None
    # The task's steps run in the same context as the first: a value set before
    # the first wait is still there after it (and can be reset there).
    return loop.create_task(_resume(coro, waiting_on), context=context)


async def _resume(coro: Coroutine[object, object, None], waiting_on: object) -> None:
    """Drives ``coro`` on from its first wait, as a task's steps would: each step
    resumed once what it waits on is done."""
    while True:
        try:
            if asyncio.isfuture(waiting_on):
                # Task.__step clears this flag on a future it is given to wait on.
                waiting_on._asyncio_future_blocking = False
                # Waits without taking the outcome, which the coroutine reads.
                await asyncio.wait((waiting_on,))
            else:  # a bare yield: give the loop one turn
                await asyncio.sleep(0)
        except asyncio.CancelledError as cancelled:
            if asyncio.isfuture(waiting_on):
                waiting_on.cancel()
            try:
                waiting_on = coro.throw(cancelled)
            except StopIteration:
                return
            continue
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return


if sys.version_info >= (3, 12):
    start_task = asyncio.eager_task_factory  # type: ignore[assignment]
