"""This process's ``SharedState``: chosen from the config and the environment.

- ``archway.redis`` (or Plano's ``routing.session_cache`` of type redis): Redis,
  shared with every replica, failing open to this process's memory;
- else ``ARCHWAY_SHARED_STATE_FILE`` (set by the parent of ``--workers``): the
  SQLite file every worker of this machine shares, failing open the same way;
- else this process's memory.

Built on first use and rebuilt when a reload changes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable

from ext_proc.state.shared import SHARED_STATE_FILE_ENV, FailOpen, FileState, LocalState
from ext_proc.state.shared import SharedState as SharedState

__all__ = ["process_state", "reset_process_state"]

log = logging.getLogger("archway.state")

_current: tuple[tuple[str | None, str | None, int], SharedState] | None = None


def process_state(
    redis_url: str | None,
    max_pins: int,
    on_error: Callable[[str, str], None] | None = None,
) -> SharedState:
    global _current
    file = os.environ.get(SHARED_STATE_FILE_ENV) or None
    ident = (redis_url, file, max_pins)
    current = _current
    if current is not None and current[0] == ident:
        return current[1]
    state: SharedState
    if redis_url is not None:
        from ext_proc.state.redis_state import RedisState

        state = FailOpen(RedisState(redis_url), LocalState(max_pins), on_error=on_error)
    elif file is not None:
        try:
            shared: SharedState = FileState(file, max_pins)
        except sqlite3.Error as exc:
            log.error(
                "cannot open the workers' shared state file %s (%s); pins and limits are "
                "this worker's own",
                file,
                exc,
            )
            shared = LocalState(max_pins)
        state = FailOpen(shared, LocalState(max_pins), on_error=on_error)
    else:
        state = LocalState(max_pins)
    if current is not None:
        _close_later(current[1])
    _current = (ident, state)
    return state


def reset_process_state() -> None:
    """Forget this process's state (tests; a worker starting afresh)."""
    global _current
    if _current is not None:
        _close_later(_current[1])
    _current = None


def _close_later(state: SharedState) -> None:
    # Requests in flight may still hold the old store; it closes once they
    # had a moment to finish. Without a running loop there is nothing to wait for.
    with contextlib.suppress(RuntimeError):
        loop = asyncio.get_running_loop()
        loop.call_later(30, lambda: loop.create_task(state.close()))
