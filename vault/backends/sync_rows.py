"""What partner sync stores (migration 0009), and the backend methods it needs.

The webhook receiver and reconciliation (in the proxy) keep records true to the
partner: these rows and methods find a record by its payment method or partner
customer (blind indexes), apply a partner event exactly once and in order, hold the
outbox written before a partner call, and keep reconciliation's cursor and summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from vault.backends.base import CustomerRow, Link, RecordRow

# What applying an event came to: applied; already applied (its id is stored); or a
# record changed between read and write (the caller reads again and retries).
ApplyOutcome = Literal["applied", "duplicate", "conflict"]


@dataclass(frozen=True, slots=True)
class SyncRow:
    """A record row with the ``created`` time of the newest partner event applied to it."""

    record: RecordRow
    partner_event_at: int | None


@dataclass(frozen=True, slots=True)
class RecordUpdate:
    """A compare-and-set of one record's ciphertext, stamped with the event's time."""

    token: str
    old_ciphertext: bytes
    ciphertext: bytes
    event_at: int


@dataclass(frozen=True, slots=True)
class PartnerEventRow:
    """One partner event as stored: its id, type, ``created`` time and what became of it."""

    event_id: str
    event_type: str
    created: int
    received_at: str
    outcome: str


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A partner call about to create a payment method: its idempotency key and token."""

    partner_key: str
    partner: str
    kind: str
    token: str
    reference: str | None
    created_at: str


class SyncBackend(Protocol):
    """The partner-sync part of the one ``Backend`` protocol (both backends implement it)."""

    async def sync_records_by_reference(self, reference_idx: str) -> list[SyncRow]:
        """Records whose payment method has this blind index."""
        ...

    async def sync_records_by_partner_customer(self, customer_idx: str) -> list[SyncRow]:
        """Records saved on the partner customer with this blind index."""
        ...

    async def sync_unlinked_records(self, *, after: str, limit: int) -> list[RecordRow]:
        """Up to ``limit`` card and bank records without a reference index, by token."""
        ...

    async def sync_link(self, links: Sequence[Link], *, settled: Sequence[str] = ()) -> None:
        """Set the blind indexes of each record and delete the ``settled`` outbox rows
        (by partner key), in one transaction."""
        ...

    async def sync_event_outcome(self, event_id: str) -> str | None:
        """The stored outcome of a partner event, or None when it was never applied."""
        ...

    async def sync_apply(
        self, event: PartnerEventRow, updates: Sequence[RecordUpdate]
    ) -> ApplyOutcome:
        """In one transaction: record the event and apply every update, or nothing.

        "duplicate" when the event id is stored already; "conflict" when a record's
        ciphertext is no longer the one read (nothing is then written).
        """
        ...

    async def sync_events_purge(self, before: str) -> int:
        """Forget partner events received before ``before``; returns how many."""
        ...

    async def sync_outbox_add(self, row: OutboxRow) -> None:
        """Record a partner call before it is made."""
        ...

    async def sync_outbox_set_reference(self, partner_key: str, reference: str) -> None:
        """Note the payment method a call created (when its record could not be stored)."""
        ...

    async def sync_outbox_page(self, *, before: str, after: str, limit: int) -> list[OutboxRow]:
        """Outbox rows created before ``before``, by partner key after ``after``."""
        ...

    async def sync_outbox_delete(self, partner_keys: Sequence[str]) -> int:
        """Forget outbox rows; returns how many were deleted."""
        ...

    async def sync_tokens_present(self, tokens: Sequence[str]) -> set[str]:
        """Which of ``tokens`` have a record."""
        ...

    async def sync_customers_page(self, *, after: str, limit: int) -> list[CustomerRow]:
        """Partner customer mappings by blind index, after ``after``."""
        ...

    async def sync_state_get(self, name: str) -> str | None:
        """A stored partner-sync value (reconcile's cursor, its last summary)."""
        ...

    async def sync_state_put(self, name: str, value: str | None, now: str) -> None:
        """Store (or with None delete) a partner-sync value."""
        ...
