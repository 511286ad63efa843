"""Partner sync in the vault: find records by payment method, change them in place, in order.

The proxy's webhook receiver and reconciliation decide *what* changes; this module
finds the records a partner object names (through keyed blind indexes, so neither a
payment method id nor a partner customer id is stored in clear), reseals a record with
new details under its own data key, and applies a partner event exactly once: the event
id and every record change commit in one transaction, and a change carries the event's
``created`` time so an older event delivered late never overwrites a newer one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from vault.backends.base import Link
from vault.backends.sync_rows import (
    ApplyOutcome,
    OutboxRow,
    PartnerEventRow,
    RecordUpdate,
    SyncBackend,
    SyncRow,
)
from vault.crypto import record_aad
from vault.errors import DecryptionFailed
from vault.lifecycle import _CUSTOMER_AAD_KIND as CUSTOMER_AAD_KIND
from vault.lifecycle import PartnerCustomer
from vault.records import Kind, NewRecord, Record, iso, utcnow
from vault.store import Vault

if TYPE_CHECKING:
    from vault.backends.postgres import PostgresBackend
    from vault.backends.sqlite import SqliteBackend

    # Both backends implement the partner-sync methods (checked by mypy here).
    _SQLITE: type[SyncBackend] = SqliteBackend
    _POSTGRES: type[SyncBackend] = PostgresBackend

_LINK_BATCH = 200
# Names in partner_sync_state: reconciliation's resumable cursor and its last summary.
RECONCILE_CURSOR = "reconcile.cursor"
RECONCILE_LAST = "reconcile.last"


@dataclass(frozen=True, slots=True)
class Synced:
    """A record as read for a change: its row (for compare-and-set) and its last event time."""

    record: Record
    ciphertext: bytes
    dek_id: str
    event_at: int | None


@dataclass(frozen=True, slots=True)
class Change:
    """New details for one record, from a partner event created at ``event_at``."""

    synced: Synced
    details: Mapping[str, Any]
    event_at: int


def sync_backend(vault: Vault) -> SyncBackend:
    """The vault's backend, as its partner-sync methods."""
    return cast(SyncBackend, vault.backend)


def reference_index(vault: Vault, partner: str, reference: str) -> str:
    """The blind index of a partner payment method id (``pm_…``)."""
    return vault.index(f"partner-reference:{partner}", reference)


def partner_customer_index(vault: Vault, partner: str, reference: str) -> str:
    """The blind index of a partner customer id (``cus_…``)."""
    return vault.index(f"partner-customer:{partner}", reference)


async def _open(vault: Vault, row: SyncRow) -> Synced:
    record = await vault._open_row(row.record)
    return Synced(record, row.record.ciphertext, row.record.dek_id, row.partner_event_at)


async def by_reference(vault: Vault, partner: str, reference: str) -> list[Synced]:
    """The records (normally one) holding this partner payment method."""
    rows = await sync_backend(vault).sync_records_by_reference(
        reference_index(vault, partner, reference)
    )
    return [await _open(vault, row) for row in rows]


async def by_partner_customer(vault: Vault, partner: str, reference: str) -> list[Synced]:
    """The records saved on this partner customer."""
    rows = await sync_backend(vault).sync_records_by_partner_customer(
        partner_customer_index(vault, partner, reference)
    )
    return [await _open(vault, row) for row in rows]


def link_of(vault: Vault, record: Record, partner_customer: str | None) -> Link | None:
    """The blind indexes of a card or bank record; None for one without a payment method."""
    if record.kind not in (Kind.CARD, Kind.BANK) or not record.partner_reference:
        return None
    partner = record.partner or ""
    customer = partner_customer or record.details.get("partner_customer")
    return Link(
        record.token,
        reference_index(vault, partner, record.partner_reference),
        partner_customer_index(vault, partner, customer) if customer else None,
    )


async def link(
    vault: Vault,
    record: Record,
    partner_customer: str | None = None,
    *,
    outbox_key: str | None = None,
) -> None:
    """Make a new record findable by its payment method and partner customer, and
    forget the outbox row (``outbox_key``) its partner call left, in one transaction."""
    found = link_of(vault, record, partner_customer)
    settled = [outbox_key] if outbox_key is not None else []
    if found is not None or settled:
        await sync_backend(vault).sync_link([found] if found else [], settled=settled)


async def put_linked(
    vault: Vault, new: NewRecord, *, token: str | None = None, outbox_key: str | None = None
) -> Record:
    """Store a new record already findable by its payment method and partner customer,
    and forget the outbox row (``outbox_key``) its partner call left, all in the record's
    own transaction: one durable write instead of two."""
    return await vault.put(
        new,
        token=token,
        link=lambda record: link_of(vault, record, None),
        settle_outbox=outbox_key,
    )


async def link_unlinked(vault: Vault) -> int:
    """Index every card and bank record stored without its blind indexes; returns how many.

    Records older than the indexes, and any whose linking a crash interrupted, are found
    here (reconciliation runs it first). A record that cannot be read is skipped.
    """
    backend = sync_backend(vault)
    after, total = "", 0
    while rows := await backend.sync_unlinked_records(after=after, limit=_LINK_BATCH):
        links: list[Link] = []
        for row in rows:
            after = row.token
            try:
                record = await vault._open_row(row)
            except DecryptionFailed:
                continue
            customer = record.details.get("partner_customer")
            if customer is None and record.customer_ref is not None:
                mapping = await vault.get_partner_customer(record.customer_ref)
                if mapping is not None and mapping.partner == record.partner:
                    customer = mapping.reference
            found = link_of(vault, record, customer)
            if found is not None:
                links.append(found)
        await backend.sync_link(links)
        total += len(links)
    return total


async def event_outcome(vault: Vault, event_id: str) -> str | None:
    """What became of a partner event applied earlier, or None when it never was."""
    return await sync_backend(vault).sync_event_outcome(event_id)


async def apply_event(
    vault: Vault, event: PartnerEventRow, changes: Sequence[Change]
) -> ApplyOutcome:
    """Record ``event`` and reseal each changed record, all in one transaction.

    "duplicate": the event was applied before (nothing changes); "conflict": a record
    changed since it was read (nothing changes; read again and retry).
    """
    updates = []
    for change in changes:
        record = replace(change.synced.record, details=dict(change.details))
        sealer = await vault._dek_by_id(change.synced.dek_id)
        plaintext = json.dumps(record.payload(), separators=(",", ":")).encode()
        sealed = sealer.seal(plaintext, record_aad(record.token, record.kind, change.synced.dek_id))
        updates.append(
            RecordUpdate(record.token, change.synced.ciphertext, sealed, change.event_at)
        )
    return await sync_backend(vault).sync_apply(event, updates)


def event_row(event_id: str, event_type: str, created: int, outcome: str) -> PartnerEventRow:
    """A partner event as stored, received now."""
    return PartnerEventRow(event_id, event_type, created, iso(utcnow()), outcome)


async def forget_events(vault: Vault, older_than: timedelta) -> int:
    """Forget partner events received more than ``older_than`` ago; returns how many.

    Ids are kept to recognise redeliveries, which Stripe makes for up to three days;
    order does not depend on them (each record keeps the time of its newest event).
    """
    return await sync_backend(vault).sync_events_purge(iso(utcnow() - older_than))


async def outbox_add(vault: Vault, partner_key: str, partner: str, kind: Kind, token: str) -> None:
    """Record, before the partner call, the key it carries and the token it will get."""
    await sync_backend(vault).sync_outbox_add(
        OutboxRow(partner_key, partner, str(kind), token, None, iso(utcnow()))
    )


async def outbox_settle(vault: Vault, partner_key: str) -> None:
    """Forget an outbox row: its request ended without leaving a payment method to find."""
    await sync_backend(vault).sync_outbox_delete([partner_key])


async def outbox_note_reference(vault: Vault, partner_key: str, reference: str) -> None:
    """Note the payment method a call created whose record could not be stored."""
    await sync_backend(vault).sync_outbox_set_reference(partner_key, reference)


async def partner_customers(
    vault: Vault, *, after: str, limit: int
) -> list[tuple[str, PartnerCustomer]]:
    """A page of the partner customers the vault maps, as (blind index, mapping)."""
    rows = await sync_backend(vault).sync_customers_page(after=after, limit=limit)
    found = []
    for row in rows:
        sealer = await vault._dek_by_id(row.dek_id)
        aad = record_aad(row.customer_idx, CUSTOMER_AAD_KIND, row.dek_id)
        payload = json.loads(sealer.open(row.ciphertext, aad))
        found.append(
            (
                row.customer_idx,
                PartnerCustomer(
                    payload["partner"], payload["reference"], datetime.fromisoformat(row.created_at)
                ),
            )
        )
    return found
