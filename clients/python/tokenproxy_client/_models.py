"""Typed results. Each keeps the whole JSON answer in ``raw`` for fields added later.

Every field the client reads from an answer is read here, in a ``from_json``: the fields
each one reads are held to the response schemas of the proxy's OpenAPI document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _opt(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class CardToken:
    """A card just tokenized: the token and what may be shown about the card."""

    token: str
    brand: str
    last4: str
    masked: str
    created_at: datetime | None
    kind: str = "card"
    # False: the partner lets it be charged once (saved on no customer); attach_token saves it.
    reusable: bool | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> CardToken:
        """Build from the POST /v1/cards answer."""
        reusable = body.get("reusable")
        return cls(
            token=body["token"],
            brand=body.get("brand", ""),
            last4=body.get("last4", ""),
            masked=body.get("masked", ""),
            reusable=reusable if isinstance(reusable, bool) else None,
            created_at=_time(body.get("created_at")),
            kind=body.get("kind", "card"),
            raw=body,
        )


@dataclass(frozen=True, slots=True)
class BankAccountToken:
    """A bank account just tokenized (masked IBAN only)."""

    token: str
    last4: str | None
    masked: str | None
    country: str | None
    created_at: datetime | None
    kind: str = "bank"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> BankAccountToken:
        """Build from the POST /v1/bank-accounts answer."""
        return cls(
            token=body["token"],
            last4=_opt(body, "last4"),
            masked=_opt(body, "masked"),
            country=_opt(body, "country"),
            created_at=_time(body.get("created_at")),
            kind=body.get("kind", "bank"),
            raw=body,
        )


@dataclass(frozen=True, slots=True)
class InvoiceToken:
    """An invoice reference stored in the vault."""

    token: str
    created_at: datetime | None
    kind: str = "invoice"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> InvoiceToken:
        """Build from the POST /v1/invoices answer."""
        return cls(
            token=body["token"],
            created_at=_time(body.get("created_at")),
            kind=body.get("kind", "invoice"),
            raw=body,
        )


@dataclass(frozen=True, slots=True)
class TokenView:
    """The masked view of a token (what the `read` scope sees)."""

    token: str
    kind: str
    created_at: datetime | None
    brand: str | None = None
    last4: str | None = None
    masked: str | None = None
    customer_ref: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    reusable: bool | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TokenView:
        """Build from a GET /v1/tokens/{token} answer (or one entry of a list)."""
        metadata = body.get("metadata")
        reusable = body.get("reusable")
        return cls(
            reusable=reusable if isinstance(reusable, bool) else None,
            token=body["token"],
            kind=body.get("kind", ""),
            created_at=_time(body.get("created_at")),
            brand=_opt(body, "brand"),
            last4=_opt(body, "last4"),
            masked=_opt(body, "masked"),
            customer_ref=_opt(body, "customer_ref"),
            metadata=dict(metadata) if isinstance(metadata, dict) else {},
            raw=body,
        )


@dataclass(frozen=True, slots=True)
class ResolvedToken:
    """A token resolved for charging: everything an off-session charge at the partner needs.

    For Stripe: ``partner_reference`` is the PaymentMethod (``pm_…``) and
    ``partner_customer`` the Customer (``cus_…``) it is saved on, to pass as
    ``payment_method`` and ``customer`` of a PaymentIntent; ``mandate_reference`` is the
    SEPA Direct Debit Mandate (``mandate_…``) of a bank token, passed as ``mandate``.
    """

    view: TokenView
    partner: str
    partner_reference: str
    partner_customer: str | None = None
    mandate_reference: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ResolvedToken | None:
        """Build from a GET /v1/tokens/{token} answer; None for a masked view (no resolve scope)."""
        reference = body.get("partner_reference")
        if not isinstance(reference, str):
            return None
        return cls(
            view=TokenView.from_json(body),
            partner=str(body.get("partner") or ""),
            partner_reference=reference,
            partner_customer=_opt(body, "partner_customer"),
            mandate_reference=_opt(body, "mandate_reference"),
        )

    @property
    def token(self) -> str:
        """The token."""
        return self.view.token

    @property
    def last4(self) -> str | None:
        """Last four digits (card) or characters (IBAN)."""
        return self.view.last4

    @property
    def brand(self) -> str | None:
        """Card brand, for cards."""
        return self.view.brand

    @property
    def customer_ref(self) -> str | None:
        """The customer the token belongs to, if any."""
        return self.view.customer_ref


@dataclass(frozen=True, slots=True)
class TokenPage:
    """One page of a customer's tokens; ``next_cursor`` goes back as ``starting_after``."""

    data: list[TokenView]
    has_more: bool
    next_cursor: str | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TokenPage:
        """Build from a GET /v1/customers/{ref}/tokens answer."""
        data = body.get("data")
        cursor = body.get("next_cursor")
        return cls(
            data=[TokenView.from_json(item) for item in data] if isinstance(data, list) else [],
            has_more=bool(body.get("has_more")),
            next_cursor=cursor if isinstance(cursor, str) and cursor else None,
        )


@dataclass(frozen=True, slots=True)
class Deletion:
    """The answer to deleting one token."""

    token: str
    deleted: bool
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, token: str, body: dict[str, Any] | None) -> Deletion:
        """Build from a DELETE /v1/tokens/{token} answer (204 has no body)."""
        body = body or {}
        return cls(token=body.get("token", token), deleted=body.get("deleted", True), raw=body)


@dataclass(frozen=True, slots=True)
class CustomerErasure:
    """The report of erasing a customer: what went, and what remains if anything."""

    customer_ref: str
    complete: bool
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, customer_ref: str, body: dict[str, Any] | None) -> CustomerErasure:
        """Build from a DELETE /v1/customers/{ref} answer: complete when nothing remains."""
        body = body or {}
        return cls(customer_ref=customer_ref, complete=not body.get("remaining"), raw=body)


@dataclass(frozen=True, slots=True)
class CustomerExport:
    """A data-subject access report: everything the vault holds about a customer."""

    customer_ref: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, customer_ref: str, body: dict[str, Any]) -> CustomerExport:
        """Build from a GET /v1/customers/{ref}/export answer."""
        return cls(customer_ref=body.get("customer_ref", customer_ref), raw=body)
