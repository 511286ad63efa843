"""Stripe webhook deliveries as Stripe makes them: the event JSON and its signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
import time
from typing import Any

# Test signing secrets (the shape of Stripe's, random per session).
SECRET = "whsec_" + secrets.token_hex(16)
NEXT_SECRET = "whsec_" + secrets.token_hex(16)
OTHER_SECRET = "whsec_" + secrets.token_hex(16)


_BASE62 = string.ascii_letters + string.digits


def new_event_id() -> str:
    """A fresh event id shaped as Stripe's: ``evt_`` and 24 base-62 characters.

    Not hex: about one hex id in 800 holds a Luhn-valid run of 13 or more digits,
    which the audit trail rightly refuses as a card number, so a hex id made a delivery
    fail at random; Stripe's alphabet makes such a run vanishingly rare.
    """
    return "evt_" + "".join(secrets.choice(_BASE62) for _ in range(24))


def card_like_event_id(run: str) -> str:
    """An event id of Stripe's alphabet whose digits ``run`` pass for a card number.

    Letters around the run keep it one group of its own, checked whole.
    """
    return "evt_" + run + "".join(secrets.choice(string.ascii_letters) for _ in range(8))


def sign(payload: bytes, secret: str, *, at: int | None = None) -> str:
    """A Stripe-Signature header: t=<unix time>,v1=<HMAC-SHA256 of "t.payload">."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(
    event_type: str, obj: dict[str, Any], *, created: int | None = None, event_id: str | None = None
) -> bytes:
    """An event body as Stripe sends it (``data.object`` is the changed object)."""
    return json.dumps(
        {
            "id": event_id or new_event_id(),
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()) if created is None else created,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
            "data": {"object": obj},
        }
    ).encode()


def card_pm(pm: str, customer: str | None, **card: object) -> dict[str, Any]:
    """A card PaymentMethod object with the given card fields."""
    fields = {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2034, **card}
    return {
        "id": pm,
        "object": "payment_method",
        "type": "card",
        "customer": customer,
        "card": fields,
    }
