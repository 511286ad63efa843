"""PostgreSQL storage for partner sync: a mixin of :class:`vault.backends.postgres.PostgresBackend`.

Mirrors :mod:`vault.backends.sqlite_sync` method for method (both implement the
:class:`vault.backends.sync_rows.SyncBackend` part of the one ``Backend`` protocol).
Applying an event is one explicit transaction; everything else is one statement.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import asyncpg

from vault.backends import sync_sql as SQL
from vault.backends.base import CustomerRow, Link, RecordRow
from vault.backends.sql import numbered
from vault.backends.sync_rows import (
    ApplyOutcome,
    OutboxRow,
    PartnerEventRow,
    RecordUpdate,
    SyncRow,
)

T = TypeVar("T")

_INSERT_EVENT: Final = numbered(SQL.INSERT_EVENT) + " ON CONFLICT (event_id) DO NOTHING"
_UPDATE_RECORD: Final = numbered(SQL.UPDATE_RECORD)
_LINK: Final = numbered(SQL.LINK)
_OUTBOX_DELETE: Final = "DELETE FROM partner_outbox WHERE partner_key = ANY($1::text[])"
_TOKENS_PRESENT: Final = "SELECT token FROM records WHERE token = ANY($1::text[])"


class _Changed(Exception):
    """A record's ciphertext changed since it was read: roll the transaction back."""


def _check_changed(status: str) -> None:
    """Roll back when a compare-and-set matched no row (the record changed meanwhile)."""
    if status != "UPDATE 1":
        raise _Changed


class PostgresSyncMixin:
    """Partner sync on PostgreSQL."""

    if TYPE_CHECKING:

        async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

        async def _fetch(self, sql: str, *args: object) -> list[Any]: ...

        async def _fetchrow(self, sql: str, *args: object) -> Any: ...

    async def sync_records_by_reference(self, reference_idx: str) -> list[SyncRow]:
        """Records whose payment method has this blind index."""
        rows = await self._fetch(numbered(SQL.BY_REFERENCE), reference_idx)
        return [SyncRow(RecordRow(*row[:-1]), row[-1]) for row in rows]

    async def sync_records_by_partner_customer(self, customer_idx: str) -> list[SyncRow]:
        """Records saved on the partner customer with this blind index."""
        rows = await self._fetch(numbered(SQL.BY_PARTNER_CUSTOMER), customer_idx)
        return [SyncRow(RecordRow(*row[:-1]), row[-1]) for row in rows]

    async def sync_unlinked_records(self, *, after: str, limit: int) -> list[RecordRow]:
        """Card and bank records without a reference index, by token."""
        rows = await self._fetch(numbered(SQL.UNLINKED), after, limit)
        return [RecordRow(*row) for row in rows]

    async def sync_link(self, links: Sequence[Link], *, settled: Sequence[str] = ()) -> None:
        """Set each record's blind indexes and forget settled outbox rows, in one transaction."""

        async def run(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                if links:
                    await conn.executemany(
                        _LINK,
                        [
                            (link.reference_idx, link.partner_customer_idx, link.token)
                            for link in links
                        ],
                    )
                if settled:
                    await conn.execute(_OUTBOX_DELETE, list(settled))

        if links or settled:
            await self._run(run)

    async def sync_event_outcome(self, event_id: str) -> str | None:
        """The stored outcome of a partner event, or None."""
        row = await self._fetchrow(numbered(SQL.EVENT_OUTCOME), event_id)
        return str(row[0]) if row else None

    async def sync_apply(
        self, event: PartnerEventRow, updates: Sequence[RecordUpdate]
    ) -> ApplyOutcome:
        """Record the event and apply every update in one transaction, or nothing."""

        async def run(conn: asyncpg.Connection) -> ApplyOutcome:
            try:
                async with conn.transaction():
                    status = await conn.execute(
                        _INSERT_EVENT,
                        event.event_id,
                        event.event_type,
                        event.created,
                        event.received_at,
                        event.outcome,
                    )
                    if status.endswith(" 0"):
                        return "duplicate"
                    for update in updates:
                        status = await conn.execute(
                            _UPDATE_RECORD,
                            update.ciphertext,
                            update.event_at,
                            update.token,
                            update.old_ciphertext,
                        )
                        _check_changed(status)
            except _Changed:
                return "conflict"
            return "applied"

        return await self._run(run)

    async def sync_events_purge(self, before: str) -> int:
        """Forget partner events received before ``before``."""

        async def run(conn: asyncpg.Connection) -> int:
            status = await conn.execute(numbered(SQL.EVENTS_PURGE), before)
            return int(status.rsplit(" ", 1)[-1])

        return await self._run(run)

    async def sync_outbox_add(self, row: OutboxRow) -> None:
        """Record a partner call before it is made."""

        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute(
                numbered(SQL.OUTBOX_ADD),
                row.partner_key,
                row.partner,
                row.kind,
                row.token,
                row.reference,
                row.created_at,
            )

        await self._run(run)

    async def sync_outbox_set_reference(self, partner_key: str, reference: str) -> None:
        """Note the payment method a call created."""

        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute(numbered(SQL.OUTBOX_SET_REFERENCE), reference, partner_key)

        await self._run(run)

    async def sync_outbox_page(self, *, before: str, after: str, limit: int) -> list[OutboxRow]:
        """Outbox rows created before ``before``, by partner key."""
        rows = await self._fetch(numbered(SQL.OUTBOX_PAGE), before, after, limit)
        return [OutboxRow(*row) for row in rows]

    async def sync_outbox_delete(self, partner_keys: Sequence[str]) -> int:
        """Forget outbox rows."""

        async def run(conn: asyncpg.Connection) -> int:
            status = await conn.execute(_OUTBOX_DELETE, list(partner_keys))
            return int(status.rsplit(" ", 1)[-1])

        return await self._run(run) if partner_keys else 0

    async def sync_tokens_present(self, tokens: Sequence[str]) -> set[str]:
        """Which of ``tokens`` have a record."""
        rows = await self._fetch(_TOKENS_PRESENT, list(tokens))
        return {str(row[0]) for row in rows}

    async def sync_customers_page(self, *, after: str, limit: int) -> list[CustomerRow]:
        """Partner customer mappings by blind index."""
        rows = await self._fetch(numbered(SQL.CUSTOMERS_PAGE), after, limit)
        return [CustomerRow(*row) for row in rows]

    async def sync_state_get(self, name: str) -> str | None:
        """A stored partner-sync value."""
        row = await self._fetchrow(numbered(SQL.STATE_GET), name)
        return str(row[0]) if row else None

    async def sync_state_put(self, name: str, value: str | None, now: str) -> None:
        """Store (or delete) a partner-sync value."""

        async def run(conn: asyncpg.Connection) -> None:
            if value is None:
                await conn.execute(numbered(SQL.STATE_DELETE), name)
            else:
                await conn.execute(numbered(SQL.STATE_PUT), name, value, now)

        await self._run(run)
