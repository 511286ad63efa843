"""PostgreSQL storage for idempotency keys, shared by every replica.

A mixin of :class:`vault.backends.postgres.PostgresBackend`, mirroring the
``idempotency_*`` methods of :mod:`vault.backends.sqlite` with the same semantics (both
implement the one ``Backend`` protocol, :mod:`vault.backends.base`);
:mod:`vault.idempotency` holds the logic. Races between processes are settled by the
database, never by reading first and writing after:

* insert-unless-live is one ``INSERT … ON CONFLICT DO UPDATE … WHERE expired``: of
  two inserters racing on one key exactly one inserts (the other waits on the row lock
  and then sees the winner's row as live);
* claim and update are compare-and-set ``UPDATE``s on the values the caller read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from vault.backends.base import IDEMPOTENCY_COLUMNS, IdempotencyRow, erased_idempotency_row
from vault.backends.sql import POSTGRES as SQL

T = TypeVar("T")

_COLUMNS = IdempotencyRow.__slots__
# Column types, for the casts an INSERT … SELECT needs (its parameters have no column
# to take a type from). Every column of IdempotencyRow must be here.
_TYPES = {
    "key_idx": "text",
    "request_mac": "text",
    "state": "text",
    "owner": "text",
    "kek_version": "integer",
    "wrapped_dek": "bytea",
    "partner_result": "bytea",
    "response": "bytea",
    "created_at": "text",
    "updated_at": "text",
    "expires_at": "text",
    "customer_idx": "text",
}
_CAST = ", ".join(f"${i}::{_TYPES[name]}" for i, name in enumerate(_COLUMNS, start=1))
_CREATED = f"${_COLUMNS.index('created_at') + 1}::text"
# One statement, one round trip: nothing is inserted while an erasure's tombstone of the
# key is live; an expired row is replaced in place (every column from the new row); a
# live one is left alone. Returns the key only when this statement wrote the row.
_INSERT_UNLESS_LIVE = (
    f"INSERT INTO idempotency_keys ({IDEMPOTENCY_COLUMNS})"  # noqa: S608 - fixed fragments
    f" SELECT {_CAST} WHERE NOT EXISTS (SELECT 1 FROM idempotency_erased"
    f" WHERE key_idx = $1::text AND expires_at > {_CREATED})"
    " ON CONFLICT (key_idx) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name in _COLUMNS if name != "key_idx")
    + " WHERE idempotency_keys.expires_at <= EXCLUDED.created_at RETURNING key_idx"
)
_CLAIM = (
    "UPDATE idempotency_keys SET owner = $1, updated_at = $2"
    " WHERE key_idx = $3 AND state = 'in_flight' AND owner IS NOT DISTINCT FROM $4"
    " AND updated_at = $5"
)
# Bounds the insert/read loop below; a key that keeps vanishing between the two is
# being purged and re-created in a tight loop, which no client does.
_INSERT_ATTEMPTS = 5


class PostgresIdempotencyMixin:
    """Idempotency-key rows on PostgreSQL."""

    if TYPE_CHECKING:

        async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _fetchrow(self, sql: str, *args: object) -> Any: ...

    async def idempotency_insert(self, row: IdempotencyRow) -> IdempotencyRow | None:
        """Insert ``row`` unless a live row has its key; returns that live row, else None.

        Race-free across processes: the insert and the liveness check are one statement.
        """
        values = tuple(getattr(row, name) for name in _COLUMNS)

        async def run(conn: asyncpg.Connection) -> tuple[bool, IdempotencyRow | None]:
            if await conn.fetchval(_INSERT_UNLESS_LIVE, *values) is not None:
                return True, None
            # A live row or a tombstone blocked us. Read it in a new statement (a new
            # snapshot), so a row committed by a concurrent inserter after our statement
            # began is seen; an erasure deletes the row and writes the tombstone in one
            # transaction, so a row that vanished may now be a tombstone.
            found = await conn.fetchrow(SQL.idempotency_get, row.key_idx)
            if found is not None:
                return False, IdempotencyRow(*found)
            erased = await conn.fetchval(SQL.idempotency_tombstone, row.key_idx, row.created_at)
            if erased is not None:
                return False, erased_idempotency_row(row.key_idx, erased)
            return False, None

        for _ in range(_INSERT_ATTEMPTS):
            inserted, live = await self._run(run)
            if inserted or live is not None:
                return live
            # The live row was deleted (purged) between the two statements: try again.
        return await self.idempotency_get(row.key_idx)

    async def idempotency_claim(
        self, key_idx: str, *, owner_was: str | None, updated_was: str, owner: str, now: str
    ) -> bool:
        """Take over an in-flight row if nobody touched it since it was read (compare-and-set)."""

        async def run(conn: asyncpg.Connection) -> bool:
            status: str = await conn.execute(_CLAIM, owner, now, key_idx, owner_was, updated_was)
            return status == "UPDATE 1"

        return await self._run(run)

    async def idempotency_update(
        self,
        key_idx: str,
        *,
        owner: str,
        now: str,
        partner_result: bytes | None = None,
        response: bytes | None = None,
        release: bool = False,
    ) -> bool:
        """Store the partner result or the final response (which ends the row's flight).

        Only the current owner may write; False means another process took the row over.
        """
        sql, args = SQL.idempotency_update(
            key_idx,
            owner=owner,
            now=now,
            partner_result=partner_result,
            response=response,
            release=release,
        )

        async def run(conn: asyncpg.Connection) -> bool:
            status: str = await conn.execute(sql, *args)
            return status == "UPDATE 1"

        return await self._run(run)

    async def idempotency_get(self, key_idx: str) -> IdempotencyRow | None:
        """One idempotency row by key index."""
        found = await self._fetchrow(SQL.idempotency_get, key_idx)
        return IdempotencyRow(*found) if found is not None else None

    async def idempotency_tombstoned(self, key_idx: str, now: str) -> bool:
        """Whether an erasure removed this key's row and its tombstone is still live."""
        return await self._fetchrow(SQL.idempotency_tombstone, key_idx, now) is not None

    async def idempotency_purge(self, now: str) -> int:
        """Delete every row whose expiry has passed; returns how many."""

        async def run(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                status: str = await conn.execute(SQL.purge_idempotency, now)
                await conn.execute(SQL.purge_idempotency_tombstones, now)
            return int(status.rsplit(maxsplit=1)[-1])

        return await self._run(run)
