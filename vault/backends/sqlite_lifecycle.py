"""SQLite storage for the data lifecycle: partner customers, listing, erasure, retention.

A mixin of :class:`vault.backends.sqlite.SqliteBackend`, kept apart so the key and
storage code and the lifecycle code can change without touching each other; its methods
are part of the one ``Backend`` protocol (:mod:`vault.backends.base`). Writes
go through the backend's group-committed writer; reads run inline like its other reads.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from vault.backends.base import (
    CustomerRow,
    DekRow,
    ErasedRows,
    PurgedRows,
    RecordRow,
    purge_in_batches,
)
from vault.backends.sql import SQLITE as SQL
from vault.errors import StorageUnavailable
from vault.retention import BASIS_SQL, Cutoff

T = TypeVar("T")


class SqliteLifecycleMixin:
    """Customer mapping, per-customer listing, erasure and retention on SQLite."""

    if TYPE_CHECKING:
        _reader: sqlite3.Connection
        _writer: sqlite3.Connection
        _executor: ThreadPoolExecutor
        _closed: bool
        _timeout_ms: int

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        def _read_one(self, sql: str, args: tuple[Any, ...]) -> Any: ...

        def _read_all(self, sql: str, args: tuple[Any, ...]) -> list[Any]: ...

    async def insert_dek(self, dek: DekRow) -> None:
        """Insert a data key alone; DuplicateRecord when the customer already has one."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(SQL.insert_dek, dek.values())

        await self._write(run)

    async def insert_customer(self, customer: CustomerRow) -> None:
        """Insert a partner mapping; the primary key makes a second one a DuplicateRecord."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                SQL.insert_customer,
                (customer.customer_idx, customer.dek_id, customer.ciphertext, customer.created_at),
            )

        await self._write(run)

    async def get_customer(self, customer_idx: str) -> CustomerRow | None:
        """A customer's partner mapping row by blind index."""
        row = self._read_one(SQL.get_customer, (customer_idx,))
        return CustomerRow(*row) if row else None

    async def list_customer_records(
        self,
        customer_idx: str,
        *,
        after: tuple[str, str] | None,
        limit: int,
        exclude: Sequence[Cutoff] = (),
    ) -> list[RecordRow]:
        """One page of a customer's records, on the records_customer index."""
        sql, args = SQL.customer_page(customer_idx, after, limit, exclude)
        return [RecordRow(*row) for row in self._read_all(sql, tuple(args))]

    async def erase_customer(
        self, customer_idx: str, *, keep: Collection[str], keep_customer: bool, now: str
    ) -> ErasedRows:
        """Delete a customer's rows and, once nothing uses it, its data key, atomically."""
        keep_set = frozenset(keep)

        def run(conn: sqlite3.Connection) -> ErasedRows:
            rows = conn.execute(
                "SELECT token, kind FROM records WHERE customer_idx = ?", (customer_idx,)
            ).fetchall()
            deleted: dict[str, int] = {}
            remaining = []
            for token, kind in rows:
                if token in keep_set:
                    remaining.append(token)
                    continue
                conn.execute("DELETE FROM records WHERE token = ?", (token,))
                deleted[kind] = deleted.get(kind, 0) + 1
            customer_deleted = False
            if not keep_customer:
                cur = conn.execute(SQL.delete_customer, (customer_idx,))
                customer_deleted = cur.rowcount > 0
            dek_deleted = conn.execute(SQL.delete_customer_dek, (customer_idx,)).rowcount > 0
            conn.execute(SQL.tombstone_idempotency, (customer_idx,))
            cur = conn.execute(SQL.delete_customer_idempotency, (customer_idx,))
            erased = ErasedRows(
                deleted, remaining, customer_deleted, dek_deleted, idempotency_deleted=cur.rowcount
            )
            if erased.found:
                conn.execute(SQL.mark_erased, (customer_idx, now))
                return erased
            before = conn.execute(SQL.was_erased, (customer_idx,)).fetchone()
            return replace(erased, previously_erased=before is not None)

        return await self._write(run)

    async def drop_customer_if_empty(self, customer_idx: str) -> bool:
        """Undo a first use that stored nothing: drop the mapping and key if no record uses them."""

        def run(conn: sqlite3.Connection) -> bool:
            if conn.execute(
                "SELECT 1 FROM records WHERE customer_idx = ? LIMIT 1", (customer_idx,)
            ).fetchone():
                return False
            conn.execute("DELETE FROM customers WHERE customer_idx = ?", (customer_idx,))
            cur = conn.execute("DELETE FROM deks WHERE customer_idx = ?", (customer_idx,))
            return cur.rowcount > 0

        return await self._write(run)

    async def touch(self, used: Mapping[str, str]) -> int:
        """Record last use for many tokens in one transaction (one fsync)."""
        if not used:
            return 0
        items = [(when, token, when) for token, when in used.items()]

        def run(conn: sqlite3.Connection) -> int:
            cur = conn.executemany(
                "UPDATE records SET last_used_at = ?"
                " WHERE token = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                items,
            )
            return cur.rowcount

        return await self._write(run)

    async def purge_expired(
        self, cutoffs: Sequence[Cutoff], *, dry_run: bool, batch: int
    ) -> PurgedRows:
        """Delete expired records in batches of ``batch`` (one transaction each)."""

        async def count(cutoff: Cutoff) -> tuple[int, int]:
            args = (str(cutoff.kind), cutoff.before)
            records, on_customer = self._read_one(SQL.count_expired(cutoff.basis), args)
            return int(records), int(on_customer)

        async def purge_batch(cutoff: Cutoff, limit: int) -> tuple[int, int]:
            condition = f"kind = ? AND {BASIS_SQL[cutoff.basis]} < ?"

            def run(conn: sqlite3.Connection) -> tuple[int, int]:
                rows = conn.execute(
                    f"SELECT token, dek_id, customer_idx FROM records"  # noqa: S608
                    f" WHERE {condition} LIMIT ?",
                    (str(cutoff.kind), cutoff.before, limit),
                ).fetchall()
                for token, _, _ in rows:
                    conn.execute("DELETE FROM records WHERE token = ?", (token,))
                # Per-record keys die with their record; customer keys stay for the
                # customer's other records and partner mapping (erasure removes those).
                for dek_id in {dek_id for _, dek_id, _ in rows}:
                    conn.execute(
                        "DELETE FROM deks WHERE dek_id = ? AND customer_idx IS NULL"
                        " AND NOT EXISTS (SELECT 1 FROM records WHERE dek_id = ?)",
                        (dek_id, dek_id),
                    )
                return len(rows), sum(1 for *_, customer in rows if customer is not None)

            return await self._write(run)

        return await purge_in_batches(
            cutoffs, dry_run=dry_run, batch=batch, count=count, purge_batch=purge_batch
        )

    async def checkpoint(self) -> bool:
        """Fold the WAL into the database and truncate it; True when nothing was left behind.

        With ``secure_delete`` on, deleted rows are zeroed in the database pages, but
        their old versions stay in WAL frames until a checkpoint resets the log; after an
        erasure this is what removes the last copy of a shredded key from our files.
        """
        if self._closed:
            raise StorageUnavailable("vault is closed")
        loop = asyncio.get_running_loop()

        def run() -> bool:
            # Another checkpoint under way (the backend's own checkpoint thread, another
            # process) makes this one answer busy at once: wait it out, briefly.
            deadline = time.monotonic() + self._timeout_ms / 1000
            while True:
                busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if int(busy) == 0 or time.monotonic() >= deadline:
                    return int(busy) == 0
                time.sleep(0.005)

        try:
            return await loop.run_in_executor(self._executor, run)
        except sqlite3.Error as exc:
            raise StorageUnavailable("checkpoint failed") from exc
