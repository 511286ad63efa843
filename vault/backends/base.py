"""What a storage backend stores, and the interface every backend implements.

Backends see only ciphertext, wrapped keys and blind indexes; encryption happens in
``vault.store`` before a row reaches them. The SQL both run alike is in
:mod:`vault.backends.sql`; their schema migrations and its runner in :mod:`vault.migrations`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from vault.retention import PAYMENT_METHOD_KINDS, Cutoff


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One row of ``records``: clear columns plus the sealed payload."""

    token: str
    kind: str
    dek_id: str
    ciphertext: bytes
    customer_idx: str | None
    fingerprint_idx: str | None
    created_at: str
    last_used_at: str | None = None

    def values(self) -> tuple[Any, ...]:
        """The columns in table order, as every backend's insert binds them."""
        return (
            self.token,
            self.kind,
            self.dek_id,
            self.ciphertext,
            self.customer_idx,
            self.fingerprint_idx,
            self.created_at,
            self.last_used_at,
        )


@dataclass(frozen=True, slots=True)
class Link:
    """The blind indexes that let partner events find a record."""

    token: str
    reference_idx: str
    partner_customer_idx: str | None


@dataclass(frozen=True, slots=True)
class DekRow:
    """One wrapped data-encryption key."""

    dek_id: str
    customer_idx: str | None
    kek_version: int
    wrapped: bytes
    created_at: str

    def values(self) -> tuple[Any, ...]:
        """The columns in table order, as every backend's insert binds them."""
        return (self.dek_id, self.customer_idx, self.kek_version, self.wrapped, self.created_at)


@dataclass(frozen=True, slots=True)
class CustomerRow:
    """One row of ``customers``: a customer's partner mapping, sealed under its data key."""

    customer_idx: str
    dek_id: str
    ciphertext: bytes
    created_at: str


@dataclass(frozen=True, slots=True)
class PurgedRows:
    """What one retention sweep deleted (with a dry run: would delete)."""

    deleted: Mapping[str, int]  # kind -> records
    # Of those, payment-method records saved on a customer (customer_idx set).
    attached: int = 0


# Both take a cutoff and answer (records, of those saved on a customer).
CountExpired = Callable[[Cutoff], Awaitable[tuple[int, int]]]
PurgeBatch = Callable[[Cutoff, int], Awaitable[tuple[int, int]]]


async def purge_in_batches(
    cutoffs: Sequence[Cutoff],
    *,
    dry_run: bool,
    batch: int,
    count: CountExpired,
    purge_batch: PurgeBatch,
) -> PurgedRows:
    """The retention sweep every backend runs, over its own statements.

    ``count`` counts the records past a cutoff (a dry run); ``purge_batch`` deletes at
    most ``batch`` of them in one transaction. Batches repeat until one comes back short,
    so no transaction holds its locks for the whole sweep.
    """
    counts: dict[str, int] = {}
    attached = 0
    for cutoff in cutoffs:
        if dry_run:
            total, on_customer = await count(cutoff)
        else:
            total = on_customer = 0
            while True:
                done, saved = await purge_batch(cutoff, batch)
                total += done
                on_customer += saved
                if done < batch:
                    break
        counts[str(cutoff.kind)] = total
        if cutoff.kind in PAYMENT_METHOD_KINDS:
            attached += on_customer
    return PurgedRows(counts, attached)


@dataclass(frozen=True, slots=True)
class ErasedRows:
    """What one erasure transaction removed and what it had to leave."""

    deleted: Mapping[str, int]  # kind -> records deleted
    remaining: Sequence[str]  # tokens still stored for the customer
    customer_row_deleted: bool
    dek_deleted: bool
    idempotency_deleted: int = 0  # the customer's idempotency rows (now tombstones)
    # Nothing of the customer was found this time, and an earlier erasure is recorded.
    previously_erased: bool = False

    @property
    def found(self) -> bool:
        """Whether the transaction saw anything of the customer (deleted or kept)."""
        return bool(
            self.deleted
            or self.remaining
            or self.customer_row_deleted
            or self.dek_deleted
            or self.idempotency_deleted
        )


@dataclass(frozen=True, slots=True)
class DekRewrap:
    """A compare-and-set change of one data key's wrapping (see ``Backend.rewrap_deks``)."""

    dek_id: str
    old_version: int
    old_wrapped: bytes
    new_version: int
    new_wrapped: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyKeyWrap:
    """The wrapped data key of one live idempotency row, as rewrap reads and moves it."""

    key_idx: str
    kek_version: int
    wrapped: bytes


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit event before it joins the chain (PCI DSS 10.2.2 fields)."""

    occurred_at: str
    event_type: str
    outcome: str
    actor: str | None
    origin: str | None
    resource: str | None
    detail: str  # canonical JSON object


@dataclass(frozen=True, slots=True)
class AuditRow:
    """A stored audit event: its position, the previous event's hash and its own."""

    seq: int
    entry: AuditEntry
    prev_hash: str
    hash: str


# (prev_hash, entry) -> this event's hash; supplied by vault.audit, which holds the key.
AuditLinker = Callable[[str, AuditEntry], str]
AUDIT_GENESIS = "0" * 64
# Said when a query meets a schema older than the code (migrations not yet applied).
SCHEMA_OUTDATED = "vault schema is out of date: run `tokenproxy migrate`"


@dataclass(frozen=True, slots=True)
class IdempotencyRow:
    """One row of ``idempotency_keys`` (column order = field order).

    ``customer_idx`` is the blind index of the customer the request named, so that
    erasing the customer finds and deletes the row; None for requests without one.
    """

    key_idx: str
    request_mac: str
    state: str
    owner: str | None
    kek_version: int
    wrapped_dek: bytes
    partner_result: bytes | None
    response: bytes | None
    created_at: str
    updated_at: str
    expires_at: str
    customer_idx: str | None = None


# The state a backend reports for a key whose row an erasure deleted (a tombstone: only
# the key's blind index and expiry are kept, so no other column holds anything).
IDEMPOTENCY_ERASED = "erased"


def erased_idempotency_row(key_idx: str, expires_at: str) -> IdempotencyRow:
    """What ``idempotency_insert`` returns for a key that an erasure tombstoned."""
    return IdempotencyRow(
        key_idx=key_idx,
        request_mac="",
        state=IDEMPOTENCY_ERASED,
        owner=None,
        kek_version=0,
        wrapped_dek=b"",
        partner_result=None,
        response=None,
        created_at=expires_at,
        updated_at=expires_at,
        expires_at=expires_at,
    )


class Backend(Protocol):
    """Storage for records, data keys, customers, idempotency keys and the audit trail.

    Every method the vault calls on a backend is here; each is one short transaction.
    Both backends implement all of it (mypy checks each against this protocol, and
    tests/vault/test_backend_contract.py runs the same contract on both).
    """

    name: str
    # False once an operation failed to reach the database (or a connection died),
    # True again after one succeeds: lets callers skip irreversible work while down.
    healthy: bool
    # True where a read is an in-process call of microseconds (SQLite), False where each
    # is a network round trip: worth folding a record's data key into its read then.
    inline_reads: bool

    async def migrate(self, *, statement_timeout: float | None = None) -> int:
        """Apply pending schema migrations; returns the schema version now in force.

        ``statement_timeout`` bounds each statement (and the wait for the migration lock), not
        the request timeout: a migration may rightly take minutes. None: the default.
        """
        ...

    async def insert(
        self,
        record: RecordRow,
        dek: DekRow | None,
        *,
        link: Link | None = None,
        settle_outbox: str | None = None,
    ) -> None:
        """Insert a record (and its new data key) atomically and durably.

        ``link`` sets the record's partner blind indexes and ``settle_outbox`` forgets
        the outbox row of the partner call that made it, in the same transaction.
        Raises DuplicateRecord when the token exists, or when ``dek`` is a customer
        key and that customer already has one (the caller then reloads it).
        """
        ...

    async def get_record(self, token: str) -> RecordRow | None:
        """The record row for ``token``, or None."""
        ...

    async def get_dek(self, dek_id: str) -> DekRow | None:
        """A wrapped data key by id."""
        ...

    async def get_record_and_dek(self, token: str) -> tuple[RecordRow, DekRow | None] | None:
        """The record row for ``token`` and the data key it names (None if gone); one read."""
        ...

    async def get_customer_dek(self, customer_idx: str) -> DekRow | None:
        """The data key of a customer (by blind index), or None."""
        ...

    async def delete_record(self, token: str) -> bool:
        """Delete one record (and its data key when no other record uses it)."""
        ...

    # -- customers, erasure, retention (migration 0004) ------------------------

    async def insert_dek(self, dek: DekRow) -> None:
        """Insert a data key alone; DuplicateRecord when the customer already has one."""
        ...

    async def insert_customer(self, customer: CustomerRow) -> None:
        """Insert a customer's partner mapping; DuplicateRecord when one exists."""
        ...

    async def get_customer(self, customer_idx: str) -> CustomerRow | None:
        """A customer's partner mapping row, or None."""
        ...

    async def list_customer_records(
        self,
        customer_idx: str,
        *,
        after: tuple[str, str] | None,
        limit: int,
        exclude: Sequence[Cutoff] = (),
    ) -> list[RecordRow]:
        """Up to ``limit`` records of a customer after the (created_at, token) cursor.

        One indexed query, ordered by (created_at, token); records past a cutoff in
        ``exclude`` are left out.
        """
        ...

    async def erase_customer(
        self, customer_idx: str, *, keep: Collection[str], keep_customer: bool, now: str
    ) -> ErasedRows:
        """In one transaction: delete the customer's records except ``keep``, its mapping
        unless ``keep_customer``, its data key once nothing uses it, and its idempotency
        rows (each leaving a tombstone until its expiry).

        When anything was found the customer is recorded as erased; when nothing was,
        ``previously_erased`` says whether such a record exists from an earlier erasure.
        """
        ...

    async def drop_customer_if_empty(self, customer_idx: str) -> bool:
        """Delete a customer's mapping and key when it has no records; True when deleted."""
        ...

    async def touch(self, used: Mapping[str, str]) -> int:
        """Set ``last_used_at`` (token -> ISO time) where it is older, in one transaction."""
        ...

    async def purge_expired(
        self, cutoffs: Sequence[Cutoff], *, dry_run: bool, batch: int
    ) -> PurgedRows:
        """Delete (or with ``dry_run`` only count) records past a cutoff; counts per kind,
        and how many of them were payment methods saved on a customer."""
        ...

    async def checkpoint(self) -> bool:
        """Make deletions final in the files (SQLite: truncate the WAL); True when done."""

    async def count_deks_by_version(self) -> dict[int, int]:
        """How many data keys each KEK version wraps."""
        ...

    async def count_idempotency_by_version(self, now: str) -> dict[int, int]:
        """How many live (unexpired at ``now``) idempotency rows each KEK version wraps."""
        ...

    async def idempotency_keys_not_on_version(
        self, version: int, *, now: str, after: str | None, limit: int
    ) -> list[IdempotencyKeyWrap]:
        """Up to ``limit`` live idempotency rows' keys not wrapped by ``version``, by key_idx."""
        ...

    async def rewrap_idempotency_keys(self, changes: Sequence[DekRewrap]) -> int:
        """As ``rewrap_deks`` for idempotency rows (``DekRewrap.dek_id`` holds the key_idx).

        Only ``kek_version`` and ``wrapped_dek`` change, so a concurrent update of the
        row's answer is neither lost nor blocks the move.
        """
        ...

    async def deks_not_on_version(
        self, version: int, *, after: str | None, limit: int
    ) -> list[DekRow]:
        """Up to ``limit`` data keys not wrapped by ``version``, by dek_id, after ``after``."""
        ...

    async def rewrap_deks(self, changes: Sequence[DekRewrap]) -> int:
        """Apply each change only if the row still holds its old version and wrapping.

        Each row changes atomically (a reader sees the old or the new pair, never a mix);
        the batch is one durable transaction. Returns how many rows changed; the rest were
        deleted or rewrapped by someone else meanwhile.
        """
        ...

    # -- idempotency keys (migrations 0003, 0007; vault.idempotency holds the logic) --

    async def idempotency_insert(self, row: IdempotencyRow) -> IdempotencyRow | None:
        """Insert ``row`` unless a live row has its key; returns what blocked it, else None.

        What blocks it is the live row, or for a key whose tombstone (left by an erasure)
        is live, ``erased_idempotency_row``. Race-free across processes: of two inserts
        of one key exactly one gets None. An expired row is replaced.
        """
        ...

    async def idempotency_claim(
        self, key_idx: str, *, owner_was: str | None, updated_was: str, owner: str, now: str
    ) -> bool:
        """Take over an in-flight row if nobody touched it since it was read (compare-and-set)."""
        ...

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
        """Store the partner result or the final response (which ends the row's flight),
        or with ``release`` give the row up; only the current owner of an in-flight row may.

        False means the row is not this owner's (taken over, or erased with its customer).
        """
        ...

    async def idempotency_get(self, key_idx: str) -> IdempotencyRow | None:
        """One idempotency row by key index, or None."""
        ...

    async def idempotency_tombstoned(self, key_idx: str, now: str) -> bool:
        """Whether an erasure removed this key's row and its tombstone is live at ``now``."""
        ...

    async def idempotency_purge(self, now: str) -> int:
        """Delete rows (and tombstones) expired at ``now``; returns how many rows."""
        ...

    # -- key ring check values (migration 0006) --------------------------------

    async def key_checks(self) -> dict[int, bytes]:
        """Every recorded check value: 0 is the index key's, N is KEK version N's.

        Raises StorageUnavailable naming ``tokenproxy migrate`` when the table is missing.
        """
        ...

    async def add_key_check(self, version: int, value: bytes, created_at: str) -> bytes:
        """Record ``value`` for ``version`` unless one is recorded; returns the stored one."""
        ...

    async def delete_key_check(self, version: int) -> None:
        """Forget the check value of ``version`` (it was retired)."""
        ...

    async def dek_on_version(self, version: int) -> DekRow | None:
        """One data key wrapped by ``version``, or None."""
        ...

    async def dek_version_range(self) -> tuple[int, int] | None:
        """The lowest and highest KEK version wrapping a data key (index probes); None if none."""
        ...

    async def customer_record_sample(self) -> RecordRow | None:
        """One record that belongs to a customer, or None."""
        ...

    async def append_audit(self, entry: AuditEntry, link: AuditLinker) -> AuditRow:
        """Append ``entry`` to the hash chain, durably.

        The last event's seq and hash must be read inside the same write transaction
        that inserts, under a lock every writer takes (SQLite: BEGIN IMMEDIATE;
        PostgreSQL: ``pg_advisory_xact_lock`` or ``SELECT … FOR UPDATE`` on a chain-head
        row), so concurrent appenders in any number of processes keep one valid chain.
        The first event gets seq 1 and prev_hash AUDIT_GENESIS.
        """
        ...

    async def read_audit(
        self, *, after_seq: int = 0, limit: int = 1000, since: str | None = None
    ) -> list[AuditRow]:
        """Audit events with seq > ``after_seq`` (and occurred_at >= ``since``), by seq."""
        ...

    async def audit_prune_point(self, before: str) -> AuditRow | None:
        """The newest event that, with every event before it, is older than ``before``.

        That is the event just before the first one at or after ``before`` in chain
        order (the head when all are older); None when the oldest event is not older.
        """
        ...

    async def prune_audit(self, through_seq: int, *, batch: int = 5000) -> int:
        """Delete events with seq <= ``through_seq``, oldest first, in batches; returns how many.

        The delete trigger allows it only behind a checkpoint event covering that seq.
        """
        ...

    async def ping(self) -> None:
        """Raise StorageUnavailable unless the database answers."""
        ...

    async def close(self) -> None:
        """Flush pending writes and release connections."""
        ...


def columns(row_type: type) -> str:
    """The SQL column list of a row dataclass: its fields, in order (they are the table's)."""
    return ", ".join(f.name for f in fields(row_type))


RECORD_COLUMNS = columns(RecordRow)
DEK_COLUMNS = columns(DekRow)
CUSTOMER_COLUMNS = columns(CustomerRow)
IDEMPOTENCY_COLUMNS = columns(IdempotencyRow)
_RECORD_WIDTH = len(fields(RecordRow))


def record_and_dek(row: Sequence[Any]) -> tuple[RecordRow, DekRow | None]:
    """A joined ``get_record_and_dek`` row split into its record and (if any) data key."""
    record = RecordRow(*row[:_RECORD_WIDTH])
    # dek_id is the first data-key column: NULL when the join found no key.
    return record, DekRow(*row[_RECORD_WIDTH:]) if row[_RECORD_WIDTH] is not None else None


AUDIT_COLUMNS = (
    "seq, occurred_at, event_type, outcome, actor, origin, resource, detail, prev_hash, hash"
)
