"""SQLite storage for partner sync: a mixin of :class:`vault.backends.sqlite.SqliteBackend`.

Its methods are the :class:`vault.backends.sync_rows.SyncBackend` part of the one
``Backend`` protocol. Writes go through the backend's group-committed writer (each op
in its own savepoint); reads run inline like its other reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from vault.backends import sync_sql as SQL
from vault.backends.base import CustomerRow, Link, RecordRow
from vault.backends.sync_rows import (
    ApplyOutcome,
    OutboxRow,
    PartnerEventRow,
    RecordUpdate,
    SyncRow,
)
from vault.errors import DuplicateRecord

T = TypeVar("T")


class _Changed(Exception):
    """A record's ciphertext changed since it was read: roll the op back."""


class SqliteSyncMixin:
    """Partner sync on SQLite."""

    if TYPE_CHECKING:

        async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T: ...

        def _read_one(self, sql: str, args: tuple[Any, ...]) -> Any: ...

        def _read_all(self, sql: str, args: tuple[Any, ...]) -> list[Any]: ...

    async def sync_records_by_reference(self, reference_idx: str) -> list[SyncRow]:
        """Records whose payment method has this blind index."""
        rows = self._read_all(SQL.BY_REFERENCE, (reference_idx,))
        return [SyncRow(RecordRow(*row[:-1]), row[-1]) for row in rows]

    async def sync_records_by_partner_customer(self, customer_idx: str) -> list[SyncRow]:
        """Records saved on the partner customer with this blind index."""
        rows = self._read_all(SQL.BY_PARTNER_CUSTOMER, (customer_idx,))
        return [SyncRow(RecordRow(*row[:-1]), row[-1]) for row in rows]

    async def sync_unlinked_records(self, *, after: str, limit: int) -> list[RecordRow]:
        """Card and bank records without a reference index, by token."""
        return [RecordRow(*row) for row in self._read_all(SQL.UNLINKED, (after, limit))]

    async def sync_link(self, links: Sequence[Link], *, settled: Sequence[str] = ()) -> None:
        """Set each record's blind indexes and forget settled outbox rows, in one transaction."""

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                SQL.LINK,
                [(link.reference_idx, link.partner_customer_idx, link.token) for link in links],
            )
            conn.executemany(SQL.OUTBOX_DELETE, [(key,) for key in settled])

        if links or settled:
            await self._write(run)

    async def sync_event_outcome(self, event_id: str) -> str | None:
        """The stored outcome of a partner event, or None."""
        row = self._read_one(SQL.EVENT_OUTCOME, (event_id,))
        return str(row[0]) if row else None

    async def sync_apply(
        self, event: PartnerEventRow, updates: Sequence[RecordUpdate]
    ) -> ApplyOutcome:
        """Record the event and apply every update in one savepoint, or nothing."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                SQL.INSERT_EVENT,
                (event.event_id, event.event_type, event.created, event.received_at, event.outcome),
            )
            for update in updates:
                cur = conn.execute(
                    SQL.UPDATE_RECORD,
                    (update.ciphertext, update.event_at, update.token, update.old_ciphertext),
                )
                if cur.rowcount != 1:
                    raise _Changed

        try:
            await self._write(run)
        except DuplicateRecord:
            return "duplicate"
        except _Changed:
            return "conflict"
        return "applied"

    async def sync_events_purge(self, before: str) -> int:
        """Forget partner events received before ``before``."""

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(SQL.EVENTS_PURGE, (before,)).rowcount

        return await self._write(run)

    async def sync_outbox_add(self, row: OutboxRow) -> None:
        """Record a partner call before it is made."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                SQL.OUTBOX_ADD,
                (row.partner_key, row.partner, row.kind, row.token, row.reference, row.created_at),
            )

        await self._write(run)

    async def sync_outbox_set_reference(self, partner_key: str, reference: str) -> None:
        """Note the payment method a call created."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(SQL.OUTBOX_SET_REFERENCE, (reference, partner_key))

        await self._write(run)

    async def sync_outbox_page(self, *, before: str, after: str, limit: int) -> list[OutboxRow]:
        """Outbox rows created before ``before``, by partner key."""
        rows = self._read_all(SQL.OUTBOX_PAGE, (before, after, limit))
        return [OutboxRow(*row) for row in rows]

    async def sync_outbox_delete(self, partner_keys: Sequence[str]) -> int:
        """Forget outbox rows."""

        def run(conn: sqlite3.Connection) -> int:
            return sum(conn.execute(SQL.OUTBOX_DELETE, (key,)).rowcount for key in partner_keys)

        return await self._write(run) if partner_keys else 0

    async def sync_tokens_present(self, tokens: Sequence[str]) -> set[str]:
        """Which of ``tokens`` have a record."""
        return {token for token in tokens if self._read_one(SQL.RECORD_PRESENT, (token,))}

    async def sync_customers_page(self, *, after: str, limit: int) -> list[CustomerRow]:
        """Partner customer mappings by blind index."""
        return [CustomerRow(*row) for row in self._read_all(SQL.CUSTOMERS_PAGE, (after, limit))]

    async def sync_state_get(self, name: str) -> str | None:
        """A stored partner-sync value."""
        row = self._read_one(SQL.STATE_GET, (name,))
        return str(row[0]) if row else None

    async def sync_state_put(self, name: str, value: str | None, now: str) -> None:
        """Store (or delete) a partner-sync value."""

        def run(conn: sqlite3.Connection) -> None:
            if value is None:
                conn.execute(SQL.STATE_DELETE, (name,))
            else:
                conn.execute(SQL.STATE_PUT, (name, value, now))

        await self._write(run)
