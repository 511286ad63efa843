"""The interface a payment partner adapter implements.

An adapter receives validated card data in hazmat wrappers, sends it to the partner
and returns only what may be stored. It raises only ``proxy.errors.PartnerError``
subclasses, with messages of its own: never the partner's text, never input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.accounts import BankAccountRequest
    from proxy.validation import CardRequest


@dataclass(frozen=True, slots=True)
class PartnerCard:
    """What the partner tells us about a card it now holds; all of it is storable."""

    reference: str
    fingerprint: str | None
    last4: str
    partner_brand: str | None


@dataclass(frozen=True, slots=True)
class PartnerBankAccount:
    """What the partner tells us about a SEPA debit account it now holds; all storable."""

    reference: str
    fingerprint: str | None
    country: str
    bank_code: str | None
    last4: str
    mandate_reference: str | None


class Partner(Protocol):
    """A payment partner adapter."""

    name: str

    async def create_card(
        self, card: CardRequest, *, idempotency_key: str | None = None
    ) -> PartnerCard:
        """Hand the card to the partner; returns its reference and storable details."""
        ...

    async def create_sepa_debit(
        self, account: BankAccountRequest, *, idempotency_key: str | None = None
    ) -> PartnerBankAccount:
        """Hand the IBAN and holder details to the partner as a SEPA debit method."""
        ...

    async def create_customer(self, *, idempotency_key: str | None = None) -> str:
        """Create a partner customer (no personal fields); returns its reference."""
        ...

    async def delete_customer(self, reference: str) -> bool:
        """Delete a partner customer; False when it was already gone."""
        ...

    async def attach(self, payment_method: str, customer: str) -> None:
        """Attach a payment method to a customer; PartnerDeclined when refused."""
        ...

    async def detach(self, payment_method: str) -> bool:
        """Detach a payment method from its customer; False when already gone or detached."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
