"""The audit trail: append-only, hash-chained events with the PCI DSS 10.2.2 fields.

Each event records who (``actor``: client name or ``cli:<user>``), what (``event_type``),
when (``occurred_at``), whether it worked (``outcome``), from where (``origin``: remote
address or host) and on what (``resource``: a token, key version or client name), plus a
small ``detail`` map. Never card data and never a partner reference: callers pass only
those fields, and :meth:`AuditLog.append` refuses any field holding a card number as
:mod:`vault.detect` reads one (any digits, any short separators).

Chaining: an event's hash is HMAC-SHA256 over the previous event's hash and every field
of the event, keyed by a subkey derived from the key ring's index key. The HMAC (rather
than a bare SHA-256) means someone who can write the database file but holds no key
cannot edit an event and recompute the hashes after it. The seq column is not hashed:
order is pinned by each event naming its predecessor's hash, so :func:`verify` tells an
edited event (its hash no longer matches it) from a deleted one (a gap in seq) and a
reordered one (intact, but not following the event before it). Removing the newest
events leaves a shorter valid chain: compare the head hash `audit verify` prints with one
recorded elsewhere (the SIEM that takes `audit export`) to catch that.

Fail closed: :class:`AuditUnavailable` when an event cannot be written, and the caller
refuses the audited action (the proxy answers 503 to a resolve it could not audit).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from vault.backends.base import AUDIT_GENESIS, AuditEntry, AuditRow, Backend
from vault.crypto import derive_subkey
from vault.detect import holds_pan
from vault.errors import AuditUnavailable, VaultError
from vault.records import iso, utcnow

__all__ = [
    "AuditBreak",
    "AuditLog",
    "AuditReport",
    "EventType",
    "Outcome",
    "audit_key",
    "link_hash",
    "parse_since",
    "row_to_json",
]

_LABEL = b"tokenproxy/audit-chain/v1\x00"
_EVENT_TYPE_RE = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)*$")
_MAX_FIELD = 200
_PAGE = 1000


class Outcome(enum.StrEnum):
    """Whether the audited action succeeded."""

    SUCCESS = "success"
    FAILURE = "failure"


class EventType(enum.StrEnum):
    """The event types this code base writes (others may add their own dotted names)."""

    RESOLVE = "token.resolve"
    DELETE = "token.delete"
    ERASURE = "customer.erase"
    CLIENT_ADD = "client.add"
    KEY_INIT = "key.init"
    KEY_ROTATE = "key.rotate"
    KEY_REWRAP = "key.rewrap"
    KEY_RETIRE = "key.retire"
    AUTH_FAILURE = "auth.failure"


def audit_key(index_key: bytes) -> bytes:
    """The chain's HMAC key: a subkey of the index key, so no extra secret to manage."""
    return derive_subkey(index_key, "audit-chain/v1")


def link_hash(key: bytes, prev_hash: str, entry: AuditEntry) -> str:
    """HMAC-SHA256 of ``prev_hash`` and every field of ``entry``, unambiguously framed."""
    parts = [_LABEL]
    for value in (
        prev_hash,
        entry.occurred_at,
        entry.event_type,
        entry.outcome,
        entry.actor,
        entry.origin,
        entry.resource,
        entry.detail,
    ):
        # A presence byte keeps None and "" apart; the length prefix keeps fields apart.
        encoded = b"" if value is None else value.encode("utf-8")
        parts.append(b"\x00" if value is None else b"\x01")
        parts.append(struct.pack(">I", len(encoded)))
        parts.append(encoded)
    return hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditBreak:
    """The first place the chain is broken."""

    seq: int
    kind: str  # "edited", "deleted" or "reordered"
    message: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The result of walking the chain."""

    events: int
    head: str
    first_break: AuditBreak | None

    @property
    def ok(self) -> bool:
        """True when the whole chain verified."""
        return self.first_break is None


class AuditLog:
    """Append to, verify and export the vault's audit trail."""

    def __init__(self, backend: Backend, index_key: bytes) -> None:
        self._backend = backend
        self._key = audit_key(index_key)

    def _link(self, prev_hash: str, entry: AuditEntry) -> str:
        return link_hash(self._key, prev_hash, entry)

    async def append(
        self,
        event_type: str,
        *,
        outcome: Outcome | bool,
        actor: str | None,
        origin: str | None,
        resource: str | None = None,
        detail: Mapping[str, str | int | bool | None] | None = None,
        occurred_at: datetime | None = None,
    ) -> AuditRow:
        """Write one event durably; AuditUnavailable if it cannot be written."""
        if isinstance(outcome, bool):
            outcome = Outcome.SUCCESS if outcome else Outcome.FAILURE
        if not _EVENT_TYPE_RE.match(event_type) or len(event_type) > 64:
            raise ValueError("event_type must be a dotted lowercase name")
        detail_json = json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"))
        # Every field, whatever its shape: a token-shaped value can be one a client
        # made up. The detector reads long hexadecimal words (blind indexes, digests)
        # as hexadecimal, so their chance digit runs are not taken for card numbers.
        # The detail is read as written, not as JSON escapes ("\uff14", "\t") would hide it.
        details = dict(detail or {})
        scanned = [
            json.dumps(details, ensure_ascii=False, separators=(",", ":")),
            *details,
            *(str(v) for v in details.values() if v is not None),
        ]
        for value in (actor, origin, resource, *scanned):
            if value is not None and holds_pan(value, hex_words=True):
                raise ValueError("audit fields must not hold card-number-like digit runs")
        for value in (actor, origin, resource):
            if value is not None and len(value) > _MAX_FIELD:
                raise ValueError(f"audit fields are at most {_MAX_FIELD} characters")
        entry = AuditEntry(
            occurred_at=iso(occurred_at or utcnow()),
            event_type=event_type,
            outcome=str(outcome),
            actor=actor,
            origin=origin,
            resource=resource,
            detail=detail_json,
        )
        try:
            return await self._backend.append_audit(entry, self._link)
        except VaultError:
            # Whatever the storage said (locked, read-only, a trigger refusing, table gone),
            # the event is not written, and the caller must not go on as if it were.
            raise AuditUnavailable("the audit event could not be written") from None

    async def events(self, *, since: datetime | None = None) -> list[AuditRow]:
        """Every event (at or after ``since``), in chain order."""
        rows: list[AuditRow] = []
        async for page in self._pages(since):
            rows.extend(page)
        return rows

    def _pages(self, since: datetime | None) -> _PageIterator:
        return _PageIterator(self._backend, iso(since) if since else None)

    async def verify(self) -> AuditReport:
        """Walk the whole chain and report the first break, if any."""
        expected_seq = 1
        prev_hash = AUDIT_GENESIS
        hashes: dict[str, int] = {}
        count = 0
        async for page in self._pages(None):
            for row in page:
                if row.seq != expected_seq:
                    missing = (
                        f"event {expected_seq}"
                        if row.seq == expected_seq + 1
                        else f"events {expected_seq}-{row.seq - 1}"
                    )
                    return AuditReport(
                        count,
                        prev_hash,
                        AuditBreak(expected_seq, "deleted", f"{missing} missing (deleted)"),
                    )
                if not hmac.compare_digest(self._link(row.prev_hash, row.entry), row.hash):
                    return AuditReport(
                        count,
                        prev_hash,
                        AuditBreak(
                            row.seq, "edited", f"event {row.seq} does not match its hash (edited)"
                        ),
                    )
                if row.prev_hash != prev_hash:
                    earlier = hashes.get(row.prev_hash)
                    why = (
                        f"it follows event {earlier}"
                        if earlier is not None
                        else "its predecessor is not in the chain"
                    )
                    return AuditReport(
                        count,
                        prev_hash,
                        AuditBreak(
                            row.seq,
                            "reordered",
                            f"event {row.seq} is out of order (reordered): {why}, "
                            f"not event {row.seq - 1}",
                        ),
                    )
                hashes[row.hash] = row.seq
                prev_hash = row.hash
                expected_seq += 1
                count += 1
        return AuditReport(count, prev_hash, None)

    async def export(self, write: Callable[[str], object], *, since: datetime | None = None) -> int:
        """Write events (at or after ``since``) as JSON lines through ``write``; returns count."""
        count = 0
        async for page in self._pages(since):
            for row in page:
                write(row_to_json(row) + "\n")
                count += 1
        return count


class _PageIterator:
    """Pages of audit rows in seq order, so a long trail never sits in memory at once."""

    def __init__(self, backend: Backend, since: str | None) -> None:
        self._backend = backend
        self._since = since
        self._after = 0

    def __aiter__(self) -> _PageIterator:
        return self

    async def __anext__(self) -> list[AuditRow]:
        page = await self._backend.read_audit(after_seq=self._after, limit=_PAGE, since=self._since)
        if not page:
            raise StopAsyncIteration
        self._after = page[-1].seq
        return page


def row_to_json(row: AuditRow) -> str:
    """One event as a JSON object (hashes included, so a SIEM can re-check the chain)."""
    entry = row.entry
    return json.dumps(
        {
            "seq": row.seq,
            "time": entry.occurred_at,
            "event_type": entry.event_type,
            "outcome": entry.outcome,
            "actor": entry.actor,
            "origin": entry.origin,
            "resource": entry.resource,
            "detail": json.loads(entry.detail),
            "prev_hash": row.prev_hash,
            "hash": row.hash,
        },
        separators=(",", ":"),
    )


def parse_since(text: str) -> datetime:
    """Parse an ISO-8601 time for ``--since`` (a date alone means its midnight UTC)."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
