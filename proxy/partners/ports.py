"""The interface a payment partner adapter implements.

An adapter receives validated card data in hazmat wrappers, sends it to the partner
and returns only what may be stored. It raises only ``proxy.domain.errors.PartnerError``
subclasses, with messages of its own: never the partner's text, never input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from proxy.domain.bank import BankAccountRequest, MandateAcceptance
from proxy.domain.requests import CardRequest


@dataclass(frozen=True, slots=True)
class PartnerCard:
    """What the partner tells us about a card it now holds; all of it is storable."""

    reference: str
    fingerprint: str | None
    last4: str
    partner_brand: str | None
    # The partner's own card facts (Stripe's card hash), None where it sent none.
    display_brand: str | None = None
    funding: str | None = None
    country: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    # Test or live data: a token made under one may not be resolved under the other.
    livemode: bool | None = None


@dataclass(frozen=True, slots=True)
class PartnerBankAccount:
    """What the partner tells us about a SEPA debit account it now holds; all storable."""

    reference: str
    fingerprint: str | None
    country: str
    bank_code: str | None
    last4: str
    # Whether the partner made it in live mode; None when the partner does not say.
    livemode: bool | None = None


@dataclass(frozen=True, slots=True)
class PartnerSetup:
    """Where the partner's setup of a payment method for off-session use stands.

    ``next_action`` is the partner's instruction for the shopper (e.g. a 3-D Secure page
    to open), reduced to fields that hold no card data.
    """

    intent: str
    status: str  # "succeeded", "requires_action", "processing" or a failure status
    payment_method: str | None
    customer: str | None
    mandate: str | None = None
    next_action: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        """True once the payment method can be charged off-session."""
        return self.status in SETUP_USABLE


@dataclass(frozen=True, slots=True)
class PartnerPaymentMethod:
    """A payment method as the partner lists it: only storable fields, for reconciliation."""

    reference: str
    kind: str  # the partner's type: card, sepa_debit
    customer: str | None
    last4: str | None
    exp_month: int | None = None
    exp_year: int | None = None
    # The partner's fingerprint of the card or account (the same for the same number).
    fingerprint: str | None = None


# A SEPA setup may still be "processing" while its mandate is already active at the partner.
SETUP_USABLE = frozenset({"succeeded", "processing"})


class Partner(Protocol):
    """A payment partner adapter."""

    name: str
    # Whether the configured key acts on live data; None when the partner cannot tell.
    livemode: bool | None

    async def create_card(
        self,
        card: CardRequest,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PartnerCard:
        """Hand the card to the partner; returns its reference and storable details.

        ``metadata`` (the vault token it will be stored under, never card data) is kept
        on the partner's object for reconciliation and support.
        """
        ...

    async def create_sepa_debit(
        self,
        account: BankAccountRequest,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PartnerBankAccount:
        """Hand the IBAN and holder details to the partner as a SEPA debit method.

        ``metadata`` as for :meth:`create_card`: the vault token, never the IBAN.
        """
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

    async def setup_off_session(
        self,
        payment_method: str,
        customer: str,
        *,
        kind: str,
        mandate: MandateAcceptance | None = None,
        return_url: str | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PartnerSetup:
        """Save a payment method on a customer for off-session charges (SCA, SEPA mandate).

        PartnerDeclined when refused; a setup needing the shopper comes back with status
        ``requires_action`` and its ``next_action``.
        """
        ...

    async def get_setup(self, intent: str) -> PartnerSetup:
        """The current state of a setup made by :meth:`setup_off_session`."""
        ...

    async def detach(self, payment_method: str) -> bool:
        """Detach a payment method from its customer; False when already gone or detached."""
        ...

    async def list_payment_methods(self, customer: str, *, kind: str) -> list[PartnerPaymentMethod]:
        """Every payment method of type ``kind`` attached to a partner customer."""
        ...

    async def get_payment_method(self, reference: str) -> PartnerPaymentMethod | None:
        """One payment method as the partner holds it now; None when it is gone."""
        ...

    async def count_subscriptions(self, customer: str) -> int:
        """How many subscriptions a partner customer has that are not yet canceled."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True, slots=True)
class CardUpdate:
    """A card's new storable details, as the partner reports them after an update."""

    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None


@dataclass(frozen=True, slots=True)
class PartnerEvent:
    """A verified partner event, reduced to what partner sync acts on.

    ``action`` is one of ``updated`` (``card`` holds the new details), ``detached``,
    ``customer_deleted``, ``mandate_inactive``, or ``ignored`` for every other type.
    ``created`` is the partner's event time (Unix seconds), which orders changes.
    """

    id: str
    type: str
    created: int
    action: str
    payment_method: str | None = None
    customer: str | None = None
    card: CardUpdate | None = None
