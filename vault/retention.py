"""Retention (Datalagring): how long each kind of token is kept, and what "expired" means.

Card and bank tokens expire after a period without use (``last_used_at``, or
``created_at`` for a token never used); invoice references a period after creation.
A period of 0 keeps a kind forever. The same rule decides both what the sweeper
deletes and what reads refuse, so an expired token answers 404 before it is swept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from vault.records import Kind, iso


class Basis(StrEnum):
    """Which timestamp a kind's retention period counts from."""

    LAST_USE = "last_use"  # last_used_at, falling back to created_at
    CREATION = "creation"


# The SQL each basis counts from, shared by both backends. These constants are the only
# parts of a cutoff that reach SQL text, and they match the expressions of the
# records_kind_activity / records_kind_created indexes exactly so the planner uses them.
BASIS_SQL: dict[Basis, str] = {
    Basis.LAST_USE: "COALESCE(last_used_at, created_at)",
    Basis.CREATION: "created_at",
}

BASIS: dict[Kind, Basis] = {
    Kind.CARD: Basis.LAST_USE,
    Kind.BANK: Basis.LAST_USE,
    Kind.INVOICE: Basis.CREATION,
}


# Kinds whose record stands for a payment method at the partner. The sweep deletes only
# the vault's record: one saved on a customer stays attached to the partner customer.
PAYMENT_METHOD_KINDS: frozenset[Kind] = frozenset({Kind.CARD, Kind.BANK})


@dataclass(frozen=True, slots=True)
class Cutoff:
    """Records of ``kind`` whose ``basis`` timestamp is before ``before`` (ISO, UTC) expired."""

    kind: Kind
    basis: Basis
    before: str


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days each kind is kept; 0 keeps it forever."""

    card_days: int = 0
    bank_days: int = 0
    invoice_days: int = 0

    def __post_init__(self) -> None:
        if min(self.card_days, self.bank_days, self.invoice_days) < 0:
            raise ValueError("retention periods must not be negative")

    def days(self, kind: Kind) -> int:
        """The retention period of ``kind`` in days (0 = forever)."""
        return {Kind.CARD: self.card_days, Kind.BANK: self.bank_days}.get(kind, self.invoice_days)

    @property
    def active(self) -> bool:
        """Whether any kind expires at all."""
        return any((self.card_days, self.bank_days, self.invoice_days))

    def cutoffs(self, now: datetime) -> list[Cutoff]:
        """One cutoff per kind that expires, as of ``now``."""
        return [
            Cutoff(kind, BASIS[kind], iso(now - timedelta(days=self.days(kind))))
            for kind in Kind
            if self.days(kind) > 0
        ]

    def expired(
        self, kind: Kind, created_at: datetime, last_used_at: datetime | None, now: datetime
    ) -> bool:
        """Whether a record with these timestamps is past its kind's period at ``now``."""
        days = self.days(kind)
        if days == 0:
            return False
        start = created_at
        if BASIS[kind] is Basis.LAST_USE and last_used_at is not None:
            start = max(created_at, last_used_at)
        return start < now - timedelta(days=days)
