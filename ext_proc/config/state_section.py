"""Plano's ``state_storage`` section: where Responses conversation state is kept."""

from __future__ import annotations

import yaml

from ext_proc.config.reader import Reader
from ext_proc.state import StateStorageConfig

__all__ = ["read_state_storage"]

_KINDS = ("memory", "postgres")


def read_state_storage(r: Reader, node: yaml.Node | None) -> StateStorageConfig | None:
    """The section, or ``None`` when absent (state off, as in Plano) or wrong (reported)."""
    if node is None:
        return None
    entries = r.mapping(node, "state_storage", ("type", "connection_string"))
    if not entries:
        if entries is not None:
            r.missing_key(node, "state_storage", "type", "type: memory")
        return None
    if "type" not in entries:
        r.missing_key(node, "state_storage", "type", "type: memory")
        return None
    kind = r.choice(entries["type"], "state_storage.type", _KINDS, "state storage type")
    if kind is None:
        return None
    if kind == "memory":
        return StateStorageConfig("memory")
    dsn_node = entries.get("connection_string")
    if dsn_node is None:
        r.missing_key(
            node,
            "state_storage",
            "connection_string",
            "connection_string: postgresql://user:$DB_PASSWORD@host:5432/dbname",
        )
        return None
    # A secret: the DSN usually holds a password, which must never be echoed.
    dsn, _ = r.secret(dsn_node, "state_storage.connection_string")
    if not dsn:
        return None
    return StateStorageConfig("postgres", dsn)
