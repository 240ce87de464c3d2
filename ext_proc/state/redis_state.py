"""Pins and token counters in Redis, shared by every gateway replica.

Each operation is one round trip and atomic on the server:

- a pin is ``SET key value NX GET PX ttl``: set only if absent, and the value
  already there comes back in the same command (Redis 7.0 or later);
- admitting a request is a Lua script (checked and added in one step, so two
  replicas cannot both take the last tokens of a window);
- a correction once usage is known is ``INCRBY`` + ``PEXPIREAT`` in one
  script (atomic, and one round trip where ``MULTI``/``EXEC`` takes three).

Counter keys carry their window index, and expire when the window ends.
Connection and socket timeouts are short: a slow Redis must not hold up
requests, and ``FailOpen`` lets them through while it is away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ext_proc.state.shared import Admission, window_of

__all__ = ["DEFAULT_TIMEOUT_S", "KEY_PREFIX", "RedisState"]

KEY_PREFIX = "archway:"
DEFAULT_TIMEOUT_S = 0.25

# KEYS[1] counter; ARGV: amount, limit, expire-at (ms). Returns {allowed, total}.
_ADMIT = """
local total = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if total + amount > tonumber(ARGV[2]) then
    return {0, total}
end
total = redis.call('INCRBY', KEYS[1], amount)
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return {1, total}
"""


async def _in_task() -> None:
    """redis-py's timeouts need a current task; the h2grpc transport runs a
    stream's first step eagerly, outside one, until its first wait. A bare
    yield is that wait: the rest runs in a task."""
    if asyncio.current_task() is None:
        await asyncio.sleep(0)


# KEYS[1] counter; ARGV: amount, expire-at (ms). One script, one round trip.
_ADD = """
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 0
"""


class RedisState:
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Imported here: redis is an optional extra (archway[redis]).
        from redis.asyncio import Redis

        self._client: Any = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
        )
        self._admit = self._client.register_script(_ADMIT)
        self._add = self._client.register_script(_ADD)
        self._clock = clock

    async def claim_pin(self, key: str, value: str, ttl_s: float) -> str | None:
        await _in_task()
        held = await self._client.set(
            KEY_PREFIX + "pin:" + key, value, nx=True, get=True, px=max(1, int(ttl_s * 1000))
        )
        return None if held is None else str(held)

    async def get_pin(self, key: str) -> str | None:
        await _in_task()
        held = await self._client.get(KEY_PREFIX + "pin:" + key)
        return None if held is None else str(held)

    async def drop_pin(self, key: str) -> None:
        await _in_task()
        await self._client.delete(KEY_PREFIX + "pin:" + key)

    def _counter(self, key: str, window_s: int) -> tuple[str, float, float]:
        now = self._clock()
        index, end = window_of(window_s, now)
        return f"{KEY_PREFIX}tokens:{key}:{index}", end, now

    async def admit(self, key: str, amount: int, limit: int, window_s: int) -> Admission:
        await _in_task()
        name, end, now = self._counter(key, window_s)
        allowed, total = await self._admit(keys=[name], args=[amount, limit, int(end * 1000)])
        return Admission(bool(allowed), int(total), end - now)

    async def add(self, key: str, amount: int, window_s: int) -> None:
        await _in_task()
        name, end, _ = self._counter(key, window_s)
        await self._add(keys=[name], args=[amount, int(end * 1000)])

    async def close(self) -> None:
        await self._client.aclose()
