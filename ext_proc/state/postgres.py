"""Conversation state in PostgreSQL, through psycopg 3's async pool.

One row per stored response: its id, its conversation as ``json`` and when it
expires. ``json``, not ``jsonb``: the items come back exactly as stored, and a
NUL character in a message (``\\u0000``), which ``jsonb`` refuses, is kept.
The table is created when absent (under an advisory lock, so workers starting
together do not race), expired rows are deleted now and then by a ``put``, and
a row past its expiry is never returned even before that.

The store is shared by every worker and replica pointed at the same database,
and survives restarts: the backend for more than one process.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ext_proc.errors import GatewayError
from ext_proc.state import Item, StateStorageError, response_not_found

__all__ = ["DEFAULT_TABLE", "PURGE_EVERY_PUTS", "PostgresStore"]

DEFAULT_TABLE = "archway_response_state"
PURGE_EVERY_PUTS = 256
"""Expired rows are deleted by one ``put`` in this many."""
CONNECT_TIMEOUT_S = 10.0
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.types.json import Json
    from psycopg_pool import AsyncConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - exercised only without the extra installed
    psycopg = None  # type: ignore[assignment]


def _where(dsn: str) -> str:
    """The database a connection string names, without its password, for messages."""
    params = conninfo_to_dict(dsn)
    host = params.get("host") or "localhost"
    port = params.get("port") or 5432
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def _unavailable(error: Exception) -> GatewayError:
    # The driver's message names the server, never the password.
    return GatewayError(
        503,
        f"Conversation state storage is unavailable: {str(error).strip().splitlines()[0]}",
        code="state_storage_unavailable",
    )


class PostgresStore:
    """Open with ``await PostgresStore.connect(dsn)``; ``close`` when done."""

    __slots__ = ("_get", "_pool", "_purge", "_put", "_puts")

    def __init__(self, pool: AsyncConnectionPool, table: str) -> None:
        self._pool = pool
        name = sql.Identifier(table)
        self._get = sql.SQL("SELECT items FROM {} WHERE id = %s AND expires_at > now()").format(
            name
        )
        self._put = sql.SQL(
            "INSERT INTO {} (id, items, expires_at) "
            "VALUES (%s, %s, now() + make_interval(secs => %s)) "
            "ON CONFLICT (id) DO UPDATE SET items = EXCLUDED.items, "
            "expires_at = EXCLUDED.expires_at"
        ).format(name)
        self._purge = sql.SQL("DELETE FROM {} WHERE expires_at <= now()").format(name)
        self._puts = 0

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        table: str = DEFAULT_TABLE,
        max_connections: int = 8,
        timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> PostgresStore:
        """Connect, and create the table if it is absent.

        Raises ``StateStorageError`` with one line saying what failed and where.
        """
        if psycopg is None:
            raise StateStorageError(
                "state_storage type postgres needs psycopg: pip install 'archway[postgres]'"
            )
        if not _IDENTIFIER.fullmatch(table):
            raise StateStorageError(f"{table!r} is not a plain lowercase table name")
        try:
            where = _where(dsn)
        except psycopg.ProgrammingError:
            # The driver's message would quote the string, password and all.
            raise StateStorageError(
                "state_storage connection_string is not a PostgreSQL connection string "
                "(postgresql://user:password@host:5432/dbname)"
            ) from None
        connect_timeout = max(int(timeout_s), 1)
        try:
            # One connection first: its error says what is wrong, where a pool's
            # would only say it timed out.
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=connect_timeout
            ) as conn:
                await _create_table(conn, table)
        except psycopg.Error as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise StateStorageError(
                f"cannot use PostgreSQL at {where} for state_storage: {reason}; "
                "check connection_string and that the server is up"
            ) from None
        pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max_connections,
            open=False,
            timeout=timeout_s,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout},
        )
        await pool.open()
        return cls(pool, table)

    async def get(self, response_id: str) -> list[Item]:
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(self._get, (response_id,))
                row = await cursor.fetchone()
        except (PoolTimeout, psycopg.Error) as error:
            raise _unavailable(error) from None
        if row is None:
            raise response_not_found(response_id)
        return list(row[0])

    async def put(self, response_id: str, items: Sequence[Item], ttl_s: float) -> None:
        self._puts += 1
        purge = self._puts % PURGE_EVERY_PUTS == 0
        try:
            async with self._pool.connection() as conn:
                await conn.execute(self._put, (response_id, Json(list(items)), float(ttl_s)))
                if purge:
                    await conn.execute(self._purge)
        except (PoolTimeout, psycopg.Error) as error:
            raise _unavailable(error) from None

    async def close(self) -> None:
        await self._pool.close()


async def _create_table(conn: psycopg.AsyncConnection, table: str) -> None:
    name = sql.Identifier(table)
    index = sql.Identifier(f"{table[:50]}_expires_at")
    async with conn.transaction():
        # Two workers creating the same table at once would collide in pg_type.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                "id text PRIMARY KEY, "
                "items json NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now(), "
                "expires_at timestamptz NOT NULL)"
            ).format(name)
        )
        await conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (expires_at)").format(index, name)
        )
