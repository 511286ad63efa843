"""The data lifecycle on the vault: partner customers, listing, erasure, last use, retention.

Mixed into :class:`vault.Vault`. Crypto-shredding: every record of a customer, and
the customer's partner mapping, is sealed under that customer's one data key (DEK).
:meth:`VaultLifecycle.erase_customer` deletes the rows, the customer's idempotency keys
(each with its own wrapped key and sealed answers) and the DEK in one transaction, then
checkpoints the database so no copy of the wrapped DEK stays in our files. A
ciphertext that survives elsewhere (a backup, a copied file) names a DEK the live
vault no longer has, so the key ring cannot open it through the vault. A backup also
holds the wrapped DEK itself; that copy dies when the KEK version that wrapped it is
retired after a rotation and rewrap (``tokenproxy keys``), which the tests show too.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from vault.backends.base import CustomerRow, DekRow, RecordRow
from vault.crypto import Sealer, record_aad
from vault.errors import DecryptionFailed, DuplicateRecord, VaultError
from vault.records import Kind, Record, iso, token_kind, utcnow
from vault.retention import RetentionPolicy

if TYPE_CHECKING:
    from datetime import timedelta

    from vault.backends.base import Backend

_CUSTOMER_AAD_KIND = "partner-customer"
_KEY_ATTEMPTS = 3
# Last-use marks per write transaction (see VaultLifecycle.flush_usage).
USAGE_BATCH = 256
MAX_PAGE = 100


@dataclass(frozen=True, slots=True)
class PartnerCustomer:
    """The partner's customer object a customer_ref maps to."""

    partner: str
    reference: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a customer's records, and the cursor of the next page."""

    records: list[Record]
    has_more: bool
    next_cursor: str | None


class ErasureStatus(StrEnum):
    """What an erasure found: the vault never reports erased for what it did not see."""

    ERASED = "erased"  # the customer's data was found and erased now
    ALREADY_ERASED = "already_erased"  # nothing left; an earlier erasure is recorded
    NOT_FOUND = "not_found"  # nothing held under this customer_ref, and no erasure recorded


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure removed and, when it had to keep something, what remains."""

    deleted: dict[str, int]
    remaining: list[str] = field(default_factory=list)
    partner_customer_remaining: bool = False
    key_shredded: bool = True
    status: ErasureStatus = ErasureStatus.ERASED
    idempotency_keys: int = 0

    @property
    def complete(self) -> bool:
        """Whether nothing of the customer remains in the vault."""
        return not self.remaining and not self.partner_customer_remaining and self.key_shredded


@dataclass(frozen=True, slots=True)
class Purge:
    """What a retention sweep deleted (with a dry run: would delete), per kind, and how
    many of those records were payment methods saved on a customer.

    The sweep deletes vault records only: each of those ``still_attached`` payment
    methods stays attached to its customer at the partner.
    """

    deleted: dict[str, int]
    still_attached: int = 0


_CURSOR_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def encode_cursor(row: RecordRow) -> str:
    """An opaque page cursor: the last row's (created_at, token), base64url."""
    raw = json.dumps([row.created_at, row.token], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The (created_at, token) a cursor holds; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, token = json.loads(raw)
        # Exactly the format iso() writes: fromisoformat alone takes any separator
        # character (NUL included), which PostgreSQL then refuses as a storage error.
        valid = (
            isinstance(created_at, str)
            and _CURSOR_TIME_RE.fullmatch(created_at) is not None
            and token_kind(token) is not None
        )
        if valid:
            datetime.fromisoformat(created_at)
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        valid = False
    if not valid:
        raise ValueError("bad cursor")
    return created_at, token


class VaultLifecycle:
    """Customer mapping, listing, erasure, last-use tracking and retention."""

    if TYPE_CHECKING:
        backend: Backend
        retention: RetentionPolicy
        touch_granularity: timedelta
        _used: dict[str, str]

        def index(self, domain: str, value: str) -> str: ...

        async def _new_dek(self, customer_idx: str | None) -> tuple[DekRow, Sealer]: ...

        async def _unwrap(self, row: DekRow) -> Sealer: ...

        def _remember(self, dek_id: str, sealer: Sealer) -> None: ...

        async def _dek_by_id(self, dek_id: str) -> Sealer: ...

        def forget_dek(self, dek_id: str) -> None: ...

        async def _open_row(self, row: RecordRow) -> Record: ...

    # -- partner customers ------------------------------------------------------

    async def customer_key(self, customer_ref: str) -> str:
        """The id of the customer's data key, creating the key on first use."""
        customer_idx = self.index("customer", customer_ref)
        for _ in range(_KEY_ATTEMPTS):
            existing = await self.backend.get_customer_dek(customer_idx)
            if existing is not None:
                return existing.dek_id
            row, sealer = await self._new_dek(customer_idx)
            try:
                await self.backend.insert_dek(row)
            except DuplicateRecord:
                continue  # another request created it first: use theirs
            self._remember(row.dek_id, sealer)
            return row.dek_id
        raise VaultError("could not create the customer's data key")

    async def get_partner_customer(self, customer_ref: str) -> PartnerCustomer | None:
        """The partner customer ``customer_ref`` maps to, or None."""
        row = await self.backend.get_customer(self.index("customer", customer_ref))
        if row is None:
            return None
        sealer = await self._dek_by_id(row.dek_id)
        plaintext = sealer.open(
            row.ciphertext, record_aad(row.customer_idx, _CUSTOMER_AAD_KIND, row.dek_id)
        )
        payload: dict[str, Any] = json.loads(plaintext)
        return PartnerCustomer(
            payload["partner"], payload["reference"], datetime.fromisoformat(row.created_at)
        )

    async def put_partner_customer(
        self, customer_ref: str, partner: str, reference: str
    ) -> PartnerCustomer:
        """Store the mapping; when another request stored one first, return that one."""
        customer_idx = self.index("customer", customer_ref)
        for _ in range(_KEY_ATTEMPTS):
            dek_id = await self.customer_key(customer_ref)
            sealer = await self._dek_by_id(dek_id)
            now = utcnow()
            plaintext = json.dumps({"partner": partner, "reference": reference}).encode()
            row = CustomerRow(
                customer_idx,
                dek_id,
                sealer.seal(plaintext, record_aad(customer_idx, _CUSTOMER_AAD_KIND, dek_id)),
                iso(now),
            )
            try:
                await self.backend.insert_customer(row)
            except DuplicateRecord:
                # The primary key on the customer index serialises first use across
                # processes: the loser reads the winner's mapping.
                winner = await self.get_partner_customer(customer_ref)
                if winner is not None:
                    return winner
                continue  # the key vanished under us (erased meanwhile): try again
            return PartnerCustomer(partner, reference, now)
        raise VaultError("could not store the partner customer")

    async def drop_customer_if_empty(self, customer_ref: str) -> bool:
        """Undo a first use that stored no record: remove the mapping and the key."""
        customer_idx = self.index("customer", customer_ref)
        existing = await self.backend.get_customer_dek(customer_idx)
        dropped = await self.backend.drop_customer_if_empty(customer_idx)
        if dropped and existing is not None:
            self.forget_dek(existing.dek_id)
        return dropped

    # -- listing ---------------------------------------------------------------

    async def list_customer(
        self,
        customer_ref: str,
        *,
        limit: int = 20,
        starting_after: str | None = None,
        include_expired: bool = False,
    ) -> Page:
        """One page of the customer's records, oldest first; one indexed query per page.

        ``starting_after`` is a cursor from a previous page (ValueError when malformed).
        Expired records are left out unless ``include_expired`` (the access report).
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1-{MAX_PAGE}")
        after = decode_cursor(starting_after) if starting_after else None
        exclude = [] if include_expired else self.retention.cutoffs(utcnow())
        rows = await self.backend.list_customer_records(
            self.index("customer", customer_ref), after=after, limit=limit + 1, exclude=exclude
        )
        has_more = len(rows) > limit
        rows = rows[:limit]
        records = [await self._open_row(row) for row in rows]
        for record in records:
            if record.customer_ref != customer_ref:  # pragma: no cover - blind index collision
                raise DecryptionFailed("ciphertext failed authentication")
        return Page(records, has_more, encode_cursor(rows[-1]) if has_more else None)

    # -- erasure ----------------------------------------------------------------

    async def erase_customer(
        self,
        customer_ref: str,
        *,
        keep: Collection[str] = (),
        keep_partner_customer: bool = False,
    ) -> Erasure:
        """Crypto-shred a customer: delete their records, mapping and data key.

        Records in ``keep`` (and the mapping with ``keep_partner_customer``) stay, and
        so does the key they need; the result says what remains. The customer's
        idempotency keys go too (a retry with one is refused, never replayed).

        Idempotent, and honest about what it saw: a repeated erasure deletes nothing
        and says ``already_erased``; a customer_ref the vault holds nothing under (never
        used, or indexed under another key ring) says ``not_found``, with
        ``key_shredded`` false: no key was seen, so none can be claimed shredded.
        """
        customer_idx = self.index("customer", customer_ref)
        dek = await self.backend.get_customer_dek(customer_idx)
        rows = await self.backend.erase_customer(
            customer_idx, keep=keep, keep_customer=keep_partner_customer, now=iso(utcnow())
        )
        if rows.found:
            status = ErasureStatus.ERASED
        elif rows.previously_erased:
            status = ErasureStatus.ALREADY_ERASED
        else:
            status = ErasureStatus.NOT_FOUND
        # With no key to delete, "shredded" holds only if the customer was seen at all.
        shredded = rows.dek_deleted if dek is not None else status is not ErasureStatus.NOT_FOUND
        if dek is not None and rows.dek_deleted:
            self.forget_dek(dek.dek_id)
        if shredded and (rows.deleted or rows.dek_deleted or rows.idempotency_deleted):
            await self.backend.checkpoint()
        still_mapped = keep_partner_customer and (
            await self.backend.get_customer(customer_idx) is not None
        )
        return Erasure(
            deleted=dict(rows.deleted),
            remaining=list(rows.remaining),
            partner_customer_remaining=still_mapped,
            key_shredded=shredded,
            status=status,
            idempotency_keys=rows.idempotency_deleted,
        )

    # -- last use and retention -----------------------------------------------

    def mark_used(self, record: Record, now: datetime | None = None) -> None:
        """Note that ``record`` was used; written later by :meth:`flush_usage`.

        Throttled: a record whose stored last use is younger than ``touch_granularity``
        is not marked again, so a hot token costs no writes at all.
        """
        now = now or utcnow()
        if record.token in self._used:
            return
        if record.last_used_at is not None and now - record.last_used_at < self.touch_granularity:
            return
        self._used[record.token] = iso(now)

    async def flush_usage(self) -> int:
        """Write every pending last-use mark, USAGE_BATCH per transaction; returns rows updated.

        Small transactions because the writer is shared: after a burst of first resolves
        tens of thousands of marks wait, and one transaction for all of them would hold
        every resolve's audit commit behind it for hundreds of milliseconds. Between two
        batches the writer commits whatever queued meanwhile.
        """
        if not self._used:
            return 0
        pending, self._used = list(self._used.items()), {}
        updated = 0
        for start in range(0, len(pending), USAGE_BATCH):
            try:
                updated += await self.backend.touch(dict(pending[start : start + USAGE_BATCH]))
            except BaseException:
                # Keep the unwritten marks for the next flush rather than lose them.
                for token, when in pending[start:]:
                    self._used.setdefault(token, when)
                raise
        return updated

    def pending_use(self, token: str) -> datetime | None:
        """The unflushed last use of ``token``, if any."""
        when = self._used.get(token)
        return datetime.fromisoformat(when) if when else None

    def is_expired(self, record: Record, now: datetime | None = None) -> bool:
        """Whether ``record`` is past its kind's retention period (pending use counts)."""
        last_used = record.last_used_at
        pending = self.pending_use(record.token)
        if pending is not None and (last_used is None or pending > last_used):
            last_used = pending
        return self.retention.expired(record.kind, record.created_at, last_used, now or utcnow())

    async def purge_expired(
        self, *, dry_run: bool = False, now: datetime | None = None, batch: int = 500
    ) -> Purge:
        """Delete (or count, with ``dry_run``) every record past retention; counts per
        kind, and the payment methods among them that stay attached at the partner.

        Pending last-use marks are flushed first, so a token used since the last flush
        is not swept as unused.
        """
        if not dry_run:
            await self.flush_usage()
        cutoffs = self.retention.cutoffs(now or utcnow())
        counts = {str(kind): 0 for kind in Kind if self.retention.days(kind) > 0}
        rows = await self.backend.purge_expired(cutoffs, dry_run=dry_run, batch=batch)
        counts.update(rows.deleted)
        if not dry_run and any(counts.values()):
            await self.backend.checkpoint()
        return Purge(counts, rows.attached)
