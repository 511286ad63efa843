"""What each scope sees of a record: the views proxy.core.views renders from vault records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from proxy.core.views import (
    RESOLVE_ONLY_DETAILS,
    created_view,
    listed_view,
    masked_view,
    resolved_view,
)
from vault import Kind, Record

CREATED = datetime(2026, 5, 15, 12, 0, tzinfo=UTC)


def record(kind: Kind, details: dict[str, Any], **fields: Any) -> Record:
    """A decrypted record as the vault hands it out."""
    values: dict[str, Any] = {
        "token": {Kind.CARD: "vtok_card_", Kind.BANK: "vtok_bank_", Kind.INVOICE: "vtok_inv_"}[kind]
        + "x" * 32,
        "kind": kind,
        "partner": "stripe",
        "partner_reference": "pm_123",
        "details": details,
        "customer_ref": "cus_1",
        "metadata": {"order_id": "A-1"},
        "created_at": CREATED,
    }
    return Record(**(values | fields))


BANK = {
    "country": "DE",
    "bank_code": "37040044",
    "last4": "3000",
    "masked": "DE89****3000",
    "mandate_reference": "mandate_1",
    "partner_customer": "cus_partner",
}
CARD = {"brand": "visa", "last4": "4242", "masked": "424242******4242"}


def test_masked_view_holds_no_partner_reference() -> None:
    """A read client sees details and metadata, never the payment method, mandate or customer."""
    view = masked_view(record(Kind.BANK, BANK))
    assert view == {
        "token": "vtok_bank_" + "x" * 32,
        "kind": "bank",
        "country": "DE",
        "bank_code": "37040044",
        "last4": "3000",
        "masked": "DE89****3000",
        "customer_ref": "cus_1",
        "metadata": {"order_id": "A-1"},
        "reusable": True,
        "created_at": "2026-05-15T12:00:00.000000Z",
    }
    assert not RESOLVE_ONLY_DETAILS & view.keys()
    assert "pm_123" not in str(view)


def test_resolved_view_adds_the_partner_references() -> None:
    """A resolve client sees the masked view plus partner, payment method, mandate and customer."""
    view = resolved_view(record(Kind.BANK, BANK))
    assert view == masked_view(record(Kind.BANK, BANK)) | {
        "mandate_reference": "mandate_1",
        "partner_customer": "cus_partner",
        "partner": "stripe",
        "partner_reference": "pm_123",
    }


def test_resolved_view_leaves_out_a_partner_customer_it_lacks() -> None:
    """A card saved on no partner customer has no partner_customer key at all."""
    view = resolved_view(record(Kind.CARD, CARD))
    assert "partner_customer" not in view
    assert view["partner_reference"] == "pm_123"


def test_listed_view_adds_last_use() -> None:
    """Listings carry last_used_at (null until first resolved)."""
    used = datetime(2026, 5, 16, tzinfo=UTC)
    assert listed_view(record(Kind.CARD, CARD))["last_used_at"] is None
    listed = listed_view(record(Kind.CARD, CARD, last_used_at=used))
    assert listed["last_used_at"] == "2026-05-16T00:00:00.000000Z"
    assert "last_used_at" not in masked_view(record(Kind.CARD, CARD))


def test_created_views() -> None:
    """A 201 carries the token and its masked details; a card's has no customer_ref."""
    assert created_view(record(Kind.CARD, CARD)) == {
        "token": "vtok_card_" + "x" * 32,
        "kind": "card",
        **CARD,
        "reusable": True,
        "created_at": "2026-05-15T12:00:00.000000Z",
    }
    bank = created_view(record(Kind.BANK, BANK))
    assert "metadata" not in bank
    assert bank["customer_ref"] == "cus_1"
    assert not RESOLVE_ONLY_DETAILS & bank.keys()


def test_details_a_record_lacks_are_left_out() -> None:
    """A record stored without some detail is answered without that key."""
    assert masked_view(record(Kind.CARD, {})) == {
        "token": "vtok_card_" + "x" * 32,
        "kind": "card",
        "customer_ref": "cus_1",
        "metadata": {"order_id": "A-1"},
        "reusable": True,
        "created_at": "2026-05-15T12:00:00.000000Z",
    }
