"""The audit trail: append-only, hash-chained events with the PCI DSS 10.2.2 fields.

Each event records who (``actor``: client name or ``cli:<user>``), what (``event_type``),
when (``occurred_at``), whether it worked (``outcome``), from where (``origin``: remote
address or host) and on what (``resource``: a token, key version or client name), plus a
small ``detail`` map. Never card data and never a partner reference: callers pass only
those fields, and :meth:`AuditLog.append` refuses any field holding a card number as
:mod:`pandetect` reads one (any digits, any short separators).

Chaining: an event's hash is HMAC-SHA256 over the previous event's hash and every field
of the event, keyed by a subkey derived from the key ring's index key. The HMAC (rather
than a bare SHA-256) means someone who can write the database file but holds no key
cannot edit an event and recompute the hashes after it. The seq column is not hashed:
order is pinned by each event naming its predecessor's hash, so :func:`verify` tells an
edited event (its hash no longer matches it) from a deleted one (a gap in seq) and a
reordered one (intact, but not following the event before it). Removing the newest
events leaves a shorter valid chain: compare the head hash `audit verify` prints with one
recorded elsewhere (the SIEM that takes `audit export`) to catch that.

Retention (PCI DSS 10.5.1 keeps at least 12 months): :meth:`AuditLog.prune` deletes the
oldest events behind an ``audit.checkpoint`` event that names the last deleted event and
its hash; the delete triggers allow exactly the events a checkpoint covers to go, and
:func:`verify` starts from the oldest kept event only when a kept checkpoint vouches for it.

Fail closed: :class:`AuditUnavailable` when an event cannot be written, and the caller
refuses the audited action (the proxy answers 503 to a resolve it could not audit).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from pandetect import holds_pan
from vault.backends.base import AUDIT_GENESIS, AuditEntry, AuditRow, Backend
from vault.crypto import derive_subkey
from vault.errors import AuditUnavailable, VaultError
from vault.records import iso, utcnow

__all__ = [
    "AuditBreak",
    "AuditLog",
    "AuditPrune",
    "AuditReport",
    "EventType",
    "Outcome",
    "audit_key",
    "digest_resource",
    "link_hash",
    "parse_since",
    "row_to_json",
]

_LABEL = b"tokenproxy/audit-chain/v1\x00"
_EVENT_TYPE_RE = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)*$")
_MAX_FIELD = 200
_PAGE = 1000
_NO_DETAIL = "{}"


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
    CLIENT_REMOVE = "client.remove"
    CLIENT_ROTATE = "client.rotate"
    KEY_INIT = "key.init"
    KEY_ROTATE = "key.rotate"
    KEY_REWRAP = "key.rewrap"
    KEY_RETIRE = "key.retire"
    AUTH_FAILURE = "auth.failure"
    MANDATE_ACCEPT = "mandate.accept"
    CHECKPOINT = "audit.checkpoint"


def audit_key(index_key: bytes) -> bytes:
    """The chain's HMAC key: a subkey of the index key, so no extra secret to manage."""
    return derive_subkey(index_key, "audit-chain/v1")


_DIGEST_LABEL = b"tokenproxy/audit-resource/v1\x00"
# Hex digits spelled as the letters a-p: a digest of only letters can never look like a
# card number to any scan, so recording it can never make an audited action fail.
_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")
_UNLETTERS = str.maketrans("abcdefghijklmnop", "0123456789abcdef")


def digest_resource(index_key: bytes, what: str, value: str) -> str:
    """``what:`` and a keyed digest of ``value``: names a client-chosen value without holding it.

    Text a client chose (an unknown token, a customer ref) must not enter the trail as
    sent, yet an operator holding the key ring can still match events to a value by
    computing its digest (``tokenproxy audit digest``).
    """
    key = derive_subkey(index_key, "audit-resource/v1")
    # surrogatepass: a path segment may carry lone surrogates, and a digest never fails.
    message = _DIGEST_LABEL + what.encode() + b"\x00" + value.encode("utf-8", "surrogatepass")
    mac = hmac.new(key, message, hashlib.sha256)
    return f"{what}:{mac.hexdigest()[:32].translate(_LETTERS)}"


def link_hash(key: bytes, prev_hash: str, entry: AuditEntry) -> str:
    """HMAC-SHA256 of ``prev_hash`` and every field of ``entry``, unambiguously framed."""
    mac = hmac.new(key, _LABEL, hashlib.sha256)
    mac.update(_framed(prev_hash, entry))
    return mac.hexdigest()


_ABSENT = b"\x00\x00\x00\x00\x00"


def _framed(prev_hash: str, entry: AuditEntry) -> bytes:
    parts: list[bytes] = []
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
        # A presence byte keeps None and "" apart; the 4-byte big-endian length keeps
        # fields apart.
        if value is None:
            parts.append(_ABSENT)
        else:
            encoded = value.encode("utf-8")
            parts.append(b"\x01" + len(encoded).to_bytes(4, "big"))
            parts.append(encoded)
    return b"".join(parts)


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
    # The oldest event kept, and the checkpoint that vouches for what went before it.
    first_seq: int = 1
    checkpoint_seq: int | None = None

    @property
    def ok(self) -> bool:
        """True when the whole chain verified."""
        return self.first_break is None


@dataclass(frozen=True, slots=True)
class AuditPrune:
    """What a retention prune did (or, dry, would do)."""

    pruned: int
    through_seq: int | None
    checkpoint_seq: int | None


def _letters(hex_text: str) -> str:
    return hex_text.translate(_LETTERS)


def _unletters(text: str) -> str:
    return text.translate(_UNLETTERS)


class AuditLog:
    """Append to, verify and export the vault's audit trail."""

    def __init__(self, backend: Backend, index_key: bytes) -> None:
        self._backend = backend
        self._key = audit_key(index_key)
        self._index_key = index_key
        # The keyed state after the label, copied per event: the key schedule is done once
        # (the writer thread computes one link per event, holding the GIL meanwhile).
        self._mac = hmac.new(self._key, _LABEL, hashlib.sha256)

    def digest(self, what: str, value: str) -> str:
        """A client-chosen ``value`` as an audit resource (see :func:`digest_resource`)."""
        return digest_resource(self._index_key, what, value)

    def _link(self, prev_hash: str, entry: AuditEntry) -> str:
        mac = self._mac.copy()
        mac.update(_framed(prev_hash, entry))
        return mac.hexdigest()

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
        if event_type == EventType.CHECKPOINT:
            # A checkpoint lets the triggers delete what it covers: only prune writes one.
            raise ValueError("checkpoint events are written by prune only")
        return await self._append(
            event_type,
            outcome=outcome,
            actor=actor,
            origin=origin,
            resource=resource,
            detail=detail,
            occurred_at=occurred_at,
        )

    async def _append(
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
        if isinstance(outcome, bool):
            outcome = Outcome.SUCCESS if outcome else Outcome.FAILURE
        if not _EVENT_TYPE_RE.match(event_type) or len(event_type) > 64:
            raise ValueError("event_type must be a dotted lowercase name")
        # Every field, whatever its shape: a token-shaped value can be one a client
        # made up. The detector reads long hexadecimal words (blind indexes, digests)
        # as hexadecimal, so their chance digit runs are not taken for card numbers.
        # The detail is read as written, not as JSON escapes ("\uff14", "\t") would hide it.
        if detail:
            details = dict(detail)
            detail_json = json.dumps(details, sort_keys=True, separators=(",", ":"))
            scanned = [
                json.dumps(details, ensure_ascii=False, separators=(",", ":")),
                *details,
                *(str(v) for v in details.values() if v is not None),
            ]
        else:
            # Most events (every resolve) carry none: nothing to encode or scan.
            detail_json, scanned = _NO_DETAIL, []
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

    async def prune(
        self,
        before: datetime,
        *,
        actor: str | None,
        origin: str | None,
        dry_run: bool = False,
    ) -> AuditPrune:
        """Delete the oldest events, all older than ``before``, behind a checkpoint event.

        The checkpoint is appended first, chained like any event, naming the last event
        it covers and that event's hash; the delete triggers then allow exactly the
        events up to that one to go. :meth:`verify` starts from the oldest event kept
        and needs a checkpoint vouching for its predecessor, so deleting more than a
        checkpoint covers (or the checkpoint itself) still reads as a deletion.
        """
        point = await self._backend.audit_prune_point(iso(before))
        first = await self._backend.read_audit(after_seq=0, limit=1)
        if point is None or not first or point.seq < first[0].seq:
            return AuditPrune(0, None, None)
        count = point.seq - first[0].seq + 1
        if dry_run:
            return AuditPrune(count, point.seq, None)
        checkpoint = await self._append(
            EventType.CHECKPOINT,
            outcome=Outcome.SUCCESS,
            actor=actor,
            origin=origin,
            detail={
                "covers_seq": point.seq,
                # Hex spelled in letters: a hash's digit runs must not trip the card scan.
                "covers_hash": _letters(point.hash),
                "pruned_before": iso(before),
                "events": count,
            },
        )
        try:
            pruned = await self._backend.prune_audit(point.seq)
        except VaultError:
            # The checkpoint stands; the next prune deletes what this one could not.
            raise AuditUnavailable("the audit events could not be pruned") from None
        return AuditPrune(pruned, point.seq, checkpoint.seq)

    async def verify(self) -> AuditReport:
        """Walk the chain from its oldest kept event and report the first break, if any.

        A chain pruned by retention starts after event 1: some checkpoint kept in the
        chain must vouch for the kept start (it covers the event just before it, whose
        hash it names, or an event kept after it).
        """
        first_seq = 1
        expected_seq = 1
        prev_hash = start_prev = AUDIT_GENESIS
        hashes: dict[str, int] = {}
        checkpoints: list[tuple[int, int, str]] = []  # (its seq, covers_seq, covers_hash)
        count = 0
        async for page in self._pages(None):
            for row in page:
                if count == 0 and row.seq > 1:
                    first_seq = expected_seq = row.seq
                    prev_hash = start_prev = row.prev_hash
                broken = self._check_row(row, expected_seq, prev_hash, hashes)
                if broken is not None:
                    return AuditReport(count, prev_hash, broken, first_seq)
                if row.entry.event_type == EventType.CHECKPOINT:
                    covered = _covered(row)
                    if covered is not None:
                        checkpoints.append((row.seq, *covered))
                hashes[row.hash] = row.seq
                prev_hash = row.hash
                expected_seq += 1
                count += 1
        if first_seq == 1:
            return AuditReport(count, prev_hash, None)
        for seq, covers_seq, covers_hash in reversed(checkpoints):
            if (covers_seq == first_seq - 1 and covers_hash == start_prev) or (
                covers_seq >= first_seq and hashes.get(covers_hash) == covers_seq
            ):
                return AuditReport(count, prev_hash, None, first_seq, seq)
        covered_to = max((c for _, c, _ in checkpoints if c < first_seq), default=0)
        gap = (
            f"event {covered_to + 1}"
            if covered_to + 1 == first_seq - 1
            else f"events {covered_to + 1}-{first_seq - 1}"
        )
        return AuditReport(
            count,
            prev_hash,
            AuditBreak(
                covered_to + 1,
                "deleted",
                f"{gap} missing (deleted), and no checkpoint covers them",
            ),
            first_seq,
        )

    def _check_row(
        self, row: AuditRow, expected_seq: int, prev_hash: str, hashes: dict[str, int]
    ) -> AuditBreak | None:
        """The break at ``row``, if it is not the intact successor of what came before."""
        if row.seq != expected_seq:
            missing = (
                f"event {expected_seq}"
                if row.seq == expected_seq + 1
                else f"events {expected_seq}-{row.seq - 1}"
            )
            return AuditBreak(expected_seq, "deleted", f"{missing} missing (deleted)")
        if not hmac.compare_digest(self._link(row.prev_hash, row.entry), row.hash):
            return AuditBreak(
                row.seq, "edited", f"event {row.seq} does not match its hash (edited)"
            )
        if row.prev_hash != prev_hash:
            earlier = hashes.get(row.prev_hash)
            why = (
                f"it follows event {earlier}"
                if earlier is not None
                else "its predecessor is not in the chain"
            )
            return AuditBreak(
                row.seq,
                "reordered",
                f"event {row.seq} is out of order (reordered): {why}, not event {row.seq - 1}",
            )
        return None

    async def export(self, write: Callable[[str], object], *, since: datetime | None = None) -> int:
        """Write events (at or after ``since``) as JSON lines through ``write``; returns count."""
        count = 0
        async for page in self._pages(since):
            for row in page:
                write(row_to_json(row) + "\n")
                count += 1
        return count


def _covered(row: AuditRow) -> tuple[int, str] | None:
    """(covers_seq, covers_hash) of a checkpoint event, if its detail is well formed."""
    try:
        detail = json.loads(row.entry.detail)
    except ValueError:
        return None
    covers_seq, covers_hash = detail.get("covers_seq"), detail.get("covers_hash")
    if not isinstance(covers_seq, int) or not isinstance(covers_hash, str):
        return None
    if covers_seq >= row.seq:  # a checkpoint vouches only for what came before it
        return None
    return covers_seq, _unletters(covers_hash)


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
