"""PostgreSQL storage for the data lifecycle: partner customers, listing, erasure, retention.

A mixin of :class:`vault.backends.postgres.PostgresBackend`, mirroring
:mod:`vault.backends.sqlite_lifecycle` method for method with the same semantics (both
implement the one ``Backend`` protocol, :mod:`vault.backends.base`).
Every method is one statement on one pooled connection, except ``erase_customer``
(one explicit transaction) and ``purge_expired`` (one statement per batch).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from vault.backends.base import (
    CustomerRow,
    DekRow,
    ErasedRows,
    PurgedRows,
    RecordRow,
    purge_in_batches,
)
from vault.backends.sql import POSTGRES as SQL
from vault.errors import StorageUnavailable
from vault.retention import BASIS_SQL, Basis, Cutoff

T = TypeVar("T")

# One statement: the mapping and the key go only when the customer has no record. The
# sub-selects see the table as it was before the statement, hence the explicit checks.
_DROP_CUSTOMER_IF_EMPTY = (
    "WITH empty AS (SELECT NOT EXISTS (SELECT 1 FROM records WHERE customer_idx = $1) AS yes),"
    " cust AS (DELETE FROM customers WHERE customer_idx = $1 AND (SELECT yes FROM empty)"
    " RETURNING 1),"
    " dek AS (DELETE FROM deks WHERE customer_idx = $1 AND (SELECT yes FROM empty)"
    " RETURNING 1)"
    # Data-modifying CTEs always run, referenced or not: ``cust`` deletes the mapping.
    " SELECT count(*) FROM dek"
)
# One statement for the whole batch of last-use marks (token, ISO time); only moves forward.
_TOUCH = (
    "UPDATE records r SET last_used_at = u.used_at"
    " FROM unnest($1::text[], $2::text[]) AS u(token, used_at)"
    " WHERE r.token = u.token AND (r.last_used_at IS NULL OR r.last_used_at < u.used_at)"
)


def _purge_batch_sql(basis: Basis) -> str:
    """Delete one batch past a cutoff, with the per-record keys only they used; returns
    the rows deleted and how many of them were saved on a customer."""
    condition = f"kind = $1 AND {BASIS_SQL[basis]} < $2"
    # FOR UPDATE: a row touched meanwhile is re-checked against the cutoff once its
    # lock is free, so a token used during the sweep is not deleted as unused.
    # Per-record keys die with their record; customer keys stay for the customer's
    # other records and partner mapping (erasure removes those). The key sub-select
    # sees the records as they were before the statement, hence the ``gone`` filter.
    return (
        f"WITH doomed AS (SELECT token FROM records WHERE {condition}"  # noqa: S608
        " LIMIT $3 FOR UPDATE),"
        " gone AS (DELETE FROM records r USING doomed d WHERE r.token = d.token"
        " RETURNING r.token, r.dek_id, r.customer_idx),"
        " dek AS (DELETE FROM deks WHERE dek_id IN (SELECT dek_id FROM gone)"
        " AND customer_idx IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM records r WHERE r.dek_id = deks.dek_id"
        " AND r.token NOT IN (SELECT token FROM gone)))"
        " SELECT count(*), count(customer_idx) FROM gone"
    )


def _rowcount(status: str) -> int:
    """The row count at the end of a command tag such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresLifecycleMixin:
    """Customer mapping, per-customer listing, erasure and retention on PostgreSQL."""

    if TYPE_CHECKING:
        _closed: bool

        async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _fetch(self, sql: str, *args: object) -> list[Any]: ...

        async def _fetchrow(self, sql: str, *args: object) -> Any: ...

    async def insert_dek(self, dek: DekRow) -> None:
        """Insert a data key alone; DuplicateRecord when the customer already has one."""

        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute(SQL.insert_dek, *dek.values())

        await self._run(run)

    async def insert_customer(self, customer: CustomerRow) -> None:
        """Insert a partner mapping; the primary key makes a second one a DuplicateRecord."""

        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute(
                SQL.insert_customer,
                customer.customer_idx,
                customer.dek_id,
                customer.ciphertext,
                customer.created_at,
            )

        await self._run(run)

    async def get_customer(self, customer_idx: str) -> CustomerRow | None:
        """A customer's partner mapping row by blind index."""
        row = await self._fetchrow(SQL.get_customer, customer_idx)
        return CustomerRow(*row) if row else None

    async def list_customer_records(
        self,
        customer_idx: str,
        *,
        after: tuple[str, str] | None,
        limit: int,
        exclude: Sequence[Cutoff] = (),
    ) -> list[RecordRow]:
        """One page of a customer's records: one range scan of records_customer, no sort."""
        sql, args = SQL.customer_page(customer_idx, after, limit, exclude)
        return [RecordRow(*row) for row in await self._fetch(sql, *args)]

    async def erase_customer(
        self, customer_idx: str, *, keep: Collection[str], keep_customer: bool, now: str
    ) -> ErasedRows:
        """Delete a customer's rows and, once nothing uses it, its data key, atomically."""
        keep_list = sorted(set(keep))

        async def run(conn: asyncpg.Connection) -> ErasedRows:
            async with conn.transaction():
                # Lock the customer's key first: a concurrent first record of this
                # customer (whose foreign-key check wants a share lock on the key)
                # waits for the erasure and then fails, instead of landing on a key
                # this transaction is about to delete.
                await conn.execute(
                    "SELECT 1 FROM deks WHERE customer_idx = $1 FOR UPDATE", customer_idx
                )
                gone = await conn.fetch(
                    "DELETE FROM records WHERE customer_idx = $1"
                    " AND token <> ALL($2::text[]) RETURNING kind",
                    customer_idx,
                    keep_list,
                )
                deleted: dict[str, int] = {}
                for (kind,) in gone:
                    deleted[kind] = deleted.get(kind, 0) + 1
                remaining = [
                    token
                    for (token,) in await conn.fetch(
                        "SELECT token FROM records WHERE customer_idx = $1"
                        " ORDER BY created_at, token",
                        customer_idx,
                    )
                ]
                customer_deleted = False
                if not keep_customer:
                    status = await conn.execute(SQL.delete_customer, customer_idx)
                    customer_deleted = _rowcount(status) > 0
                status = await conn.execute(SQL.delete_customer_dek, customer_idx)
                dek_deleted = _rowcount(status) > 0
                await conn.execute(SQL.tombstone_idempotency, customer_idx)
                status = await conn.execute(SQL.delete_customer_idempotency, customer_idx)
                erased = ErasedRows(
                    deleted,
                    remaining,
                    customer_deleted,
                    dek_deleted,
                    idempotency_deleted=_rowcount(status),
                )
                if erased.found:
                    await conn.execute(SQL.mark_erased, customer_idx, now)
                    return erased
                before = await conn.fetchval(SQL.was_erased, customer_idx)
                return replace(erased, previously_erased=before is not None)

        return await self._run(run)

    async def drop_customer_if_empty(self, customer_idx: str) -> bool:
        """Undo a first use that stored nothing: drop the mapping and key if no record uses them."""

        async def run(conn: asyncpg.Connection) -> bool:
            dropped: int = await conn.fetchval(_DROP_CUSTOMER_IF_EMPTY, customer_idx)
            return dropped > 0

        return await self._run(run)

    async def touch(self, used: Mapping[str, str]) -> int:
        """Record last use for many tokens in one statement (one commit, one WAL flush)."""
        if not used:
            return 0
        tokens = list(used)
        times = [used[token] for token in tokens]

        async def run(conn: asyncpg.Connection) -> int:
            return _rowcount(await conn.execute(_TOUCH, tokens, times))

        return await self._run(run)

    async def purge_expired(
        self, cutoffs: Sequence[Cutoff], *, dry_run: bool, batch: int
    ) -> PurgedRows:
        """Delete expired records in batches of ``batch`` (one statement each)."""

        async def count(cutoff: Cutoff) -> tuple[int, int]:
            row = await self._fetchrow(
                SQL.count_expired(cutoff.basis), str(cutoff.kind), cutoff.before
            )
            return int(row[0]), int(row[1])

        async def purge_batch(cutoff: Cutoff, limit: int) -> tuple[int, int]:
            async def run(conn: asyncpg.Connection) -> tuple[int, int]:
                row = await conn.fetchrow(
                    _purge_batch_sql(cutoff.basis), str(cutoff.kind), cutoff.before, limit
                )
                return int(row[0]), int(row[1])

            return await self._run(run)

        return await purge_in_batches(
            cutoffs, dry_run=dry_run, batch=batch, count=count, purge_batch=purge_batch
        )

    async def checkpoint(self) -> bool:
        """Nothing to do on PostgreSQL; True (deletions are committed and final to readers).

        SQLite's checkpoint truncates the WAL so a shredded key's bytes leave our files.
        PostgreSQL has no equivalent we could call per erasure: deleted tuples stay in
        the heap pages until VACUUM (autovacuum) reclaims them, and in WAL segments and
        base backups until those are recycled. Crypto-shredding does not rely on that
        physical erasure: a leftover wrapped DEK is useless without its KEK version, and
        rotating, rewrapping and retiring that version (``tokenproxy keys``) makes every
        such copy, here or in a backup, undecryptable.
        """
        if self._closed:
            raise StorageUnavailable("vault is closed")
        return True
