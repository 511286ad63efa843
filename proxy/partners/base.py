"""The interface a payment partner adapter implements.

An adapter receives validated card data in hazmat wrappers, sends it to the partner
and returns only what may be stored. It raises only ``proxy.errors.PartnerError``
subclasses, with messages of its own: never the partner's text, never input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.validation import CardRequest


@dataclass(frozen=True, slots=True)
class PartnerCard:
    """What the partner tells us about a card it now holds; all of it is storable."""

    reference: str
    fingerprint: str | None
    last4: str
    partner_brand: str | None


class Partner(Protocol):
    """A payment partner adapter."""

    name: str

    async def create_card(
        self, card: CardRequest, *, idempotency_key: str | None = None
    ) -> PartnerCard:
        """Hand the card to the partner; returns its reference and storable details."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
