"""Record model: what the vault keeps about a token.

Everything but the token, kind and timestamps lives inside the record's ciphertext;
blind indexes (keyed HMACs) let the store find records by customer or partner
fingerprint without holding either in clear.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pandetect import holds_pan


class Kind(StrEnum):
    """What a token stands for."""

    CARD = "card"
    BANK = "bank"
    INVOICE = "invoice"


# Not "tok_": Stripe uses that prefix, and a token should say whose it is at a glance.
TOKEN_PREFIX: dict[Kind, str] = {
    Kind.CARD: "vtok_card_",
    Kind.BANK: "vtok_bank_",
    Kind.INVOICE: "vtok_inv_",
}
_TOKEN_RANDOM_BYTES = 24  # 192 bits: far past the 128-bit floor, and 32 URL-safe characters
_TOKEN_RE = re.compile(r"^vtok_(card|bank|inv)_[A-Za-z0-9_-]{32}$")
_KIND_BY_WORD = {"card": Kind.CARD, "bank": Kind.BANK, "inv": Kind.INVOICE}


def new_token(kind: Kind) -> str:
    """A fresh random token for ``kind``; never derived from the data it stands for."""
    # A token's random part can spell a Luhn-valid run of digits by chance (about one in
    # 10^10): the audit trail would refuse it as a resource, so every resolve of that
    # token would fail, and log redaction would hide it. A minted token never holds one.
    while True:
        token = TOKEN_PREFIX[kind] + secrets.token_urlsafe(_TOKEN_RANDOM_BYTES)
        if not holds_pan(token):
            return token


def token_from_seed(kind: Kind, seed: bytes) -> str:
    """The token for ``kind`` whose random part is ``seed`` (24 bytes from a secret source).

    For a token chosen before its record exists and that must come out the same each
    time the choice is made again (an idempotent request resumed after a crash).
    """
    if len(seed) != _TOKEN_RANDOM_BYTES:
        raise ValueError(f"seed must be {_TOKEN_RANDOM_BYTES} bytes")
    drawn, attempt = seed, 0
    # A seed that spells a card-like run (see new_token) is hashed again, with a counter:
    # still the same token every time for the same seed, and every other seed keeps its
    # token as it was.
    while holds_pan(token := TOKEN_PREFIX[kind] + base64.urlsafe_b64encode(drawn).decode()):
        attempt += 1
        drawn = hashlib.sha256(seed + attempt.to_bytes(4, "big")).digest()[:_TOKEN_RANDOM_BYTES]
    return token


def token_kind(token: str) -> Kind | None:
    """The kind a well-formed token names, or None when the token's shape is wrong."""
    match = _TOKEN_RE.match(token)
    return _KIND_BY_WORD[match.group(1)] if match else None


def utcnow() -> datetime:
    """The current time, UTC, to the microsecond."""
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """ISO-8601 UTC with a Z, the one timestamp format the API speaks."""
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    # isoformat is C without a format string to parse: half of strftime's cost, and
    # several stamps go into every tokenize (record, data key, view).
    return ts.isoformat(timespec="microseconds")[:-6] + "Z"


@dataclass(frozen=True, slots=True)
class NewRecord:
    """What a caller gives the vault to store; the vault adds the token and timestamps."""

    kind: Kind
    partner: str | None
    partner_reference: str | None
    details: dict[str, Any] = field(default_factory=dict)
    customer_ref: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # The partner's fingerprint of the underlying card/account: kept only as a blind index.
    fingerprint: str | None = None
    # That blind index made earlier (Vault.fingerprint_index), for callers that must
    # hold on to it across a crash without keeping the fingerprint itself.
    fingerprint_idx: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A stored record, decrypted."""

    token: str
    kind: Kind
    partner: str | None
    partner_reference: str | None
    details: dict[str, Any]
    customer_ref: str | None
    metadata: dict[str, str]
    created_at: datetime
    last_used_at: datetime | None = None

    def payload(self) -> dict[str, Any]:
        """The fields that go inside the ciphertext."""
        return {
            "partner": self.partner,
            "partner_reference": self.partner_reference,
            "details": self.details,
            "customer_ref": self.customer_ref,
            "metadata": self.metadata,
        }
