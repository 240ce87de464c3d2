"""Conversation state at the edge: the one place the ext_proc streams await the store.

A Responses turn to a provider without the Responses API crosses two streams.
The routing stream reads the stored history it continues (``history``) and,
when the client asked for ``store``, keeps the conversation so far under the
new response's pending key (``begin``). The translation stream, which may run
in another worker, reads that back and stores it with the answer's output under
the response id (``finish``). The store itself carries what the response side
needs, so nothing larger than the response id crosses Envoy's headers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ext_proc.errors import GatewayError
from ext_proc.state import (
    DEFAULT_TTL_S,
    PENDING_TTL_S,
    ConversationStore,
    StateStorageError,
    pending_key,
    state_storage_not_configured,
)

__all__ = ["Conversations"]

log = logging.getLogger("archway.state")


class Conversations:
    """This process's conversation store, or ``None`` when ``state_storage`` is off."""

    __slots__ = ("store", "ttl_s")

    def __init__(self, store: ConversationStore | None, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.store = store
        self.ttl_s = ttl_s

    async def history(self, previous_response_id: str) -> list[dict[str, Any]]:
        """The stored conversation a request continues: a 400 when state is off, a
        404 for an unknown or expired id, a 503 when the store is unreachable."""
        if self.store is None:
            raise state_storage_not_configured()
        return await self.store.get(previous_response_id)

    async def begin(self, response_id: str, conversation: Sequence[Mapping[str, Any]]) -> None:
        """Keep this turn's conversation until its answer arrives."""
        if self.store is None:
            return
        try:
            await self.store.put(
                pending_key(response_id), [dict(i) for i in conversation], PENDING_TTL_S
            )
        except StateStorageError as error:
            # Too big to keep: the turn is answered, and cannot be continued.
            log.warning("response %s will not be stored: %s", response_id, error)

    async def finish(self, response_id: str, output: Sequence[Mapping[str, Any]]) -> None:
        """Store the whole conversation, answer included, under the response id.
        Never raises: the client already has its answer, and a store that failed
        shows when the next turn names this id (a 404 or 503 then)."""
        if self.store is None:
            return
        try:
            items = await self.store.get(pending_key(response_id))
            await self.store.put(response_id, [*items, *map(dict, output)], self.ttl_s)
            # Gone at once, not in an hour: pending turns must not crowd a
            # bounded memory store's stored conversations out.
            await self.store.delete(pending_key(response_id))
        except GatewayError as error:
            log.warning("response %s not stored: %s", response_id, error.message)
        except StateStorageError as error:
            log.warning("response %s not stored: %s", response_id, error)
