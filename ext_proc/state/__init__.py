"""Conversation state for the Responses API: ``previous_response_id`` and ``store``
when the provider is not OpenAI.

Each stored response keeps its whole conversation (the items of every turn up
to and including its own output), so the next turn reads one record and
prepends it. Plano's ``state_storage: {type: memory | postgres,
connection_string}`` picks the backend: ``memory`` (``MemoryStore``, bounded LRU
with expiry) or ``postgres`` (``PostgresStore``). Both keep items as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ext_proc.errors import GatewayError

__all__ = [
    "DEFAULT_TTL_S",
    "ConversationStore",
    "StateStorageConfig",
    "StateStorageError",
    "conversation",
    "open_store",
    "parse_state_storage",
    "response_not_found",
    "state_storage_not_configured",
]

Item = dict[str, Any]

DEFAULT_TTL_S = 30 * 24 * 3600.0
"""How long a stored response can be continued: 30 days, as OpenAI keeps them."""


class StateStorageError(Exception):
    """The state storage cannot be configured or reached; the message says how to fix it."""


class ConversationStore(Protocol):
    async def get(self, response_id: str) -> list[Item]:
        """The conversation stored under ``response_id``; a 404 ``GatewayError`` when
        there is none or it expired."""
        ...

    async def put(self, response_id: str, items: Sequence[Item], ttl_s: float) -> None:
        """Keep ``items`` under ``response_id`` for ``ttl_s`` seconds."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StateStorageConfig:
    kind: str
    """``memory`` or ``postgres``."""
    connection_string: str | None = field(default=None, repr=False)
    """Usually holds a password: kept out of ``repr`` and so out of logs."""
    ttl_s: float = DEFAULT_TTL_S


def parse_state_storage(section: object) -> StateStorageConfig:
    """Plano's ``state_storage`` section, ``$VAR`` references already substituted."""
    if not isinstance(section, Mapping):
        raise StateStorageError("state_storage must be a mapping with a 'type'")
    unknown = sorted(set(section) - {"type", "connection_string"})
    if unknown:
        raise StateStorageError(f"state_storage: unknown key {unknown[0]!r}")
    kind = section.get("type")
    if kind == "memory":
        return StateStorageConfig("memory")
    if kind == "postgres":
        dsn = section.get("connection_string")
        if not isinstance(dsn, str) or not dsn:
            raise StateStorageError(
                "state_storage: type postgres needs a connection_string "
                "(e.g. postgresql://user:password@host:5432/dbname)"
            )
        return StateStorageConfig("postgres", dsn)
    raise StateStorageError(f"state_storage.type {kind!r} is not one of memory, postgres")


async def open_store(config: StateStorageConfig) -> ConversationStore:
    """The store ``config`` describes, connected and ready."""
    if config.kind == "memory":
        from ext_proc.state.memory import MemoryStore

        return MemoryStore()
    from ext_proc.state.postgres import PostgresStore

    return await PostgresStore.connect(config.connection_string or "")


def response_not_found(response_id: str) -> GatewayError:
    """What a client gets for an unknown or expired ``previous_response_id``, as OpenAI says it."""
    return GatewayError(
        404,
        f"Previous response with id '{response_id}' not found.",
        code="previous_response_not_found",
        param="previous_response_id",
    )


def conversation(
    history: Sequence[Item], inputs: Sequence[Item], outputs: Sequence[Item]
) -> list[Item]:
    """What a stored response keeps: everything said up to and including its answer."""
    return [*history, *inputs, *outputs]


def state_storage_not_configured() -> GatewayError:
    """``previous_response_id`` for a provider without the Responses API, when the
    config has no ``state_storage``: as in Plano, state is then off, and the
    client must send the whole conversation itself."""
    return GatewayError(
        400,
        "previous_response_id needs conversation state, and this gateway has no "
        "state_storage configured; send the whole conversation as input instead.",
        code="state_storage_not_configured",
        param="previous_response_id",
    )
