"""Stripe webhook events: the signature checked by the SDK, the payload reduced to our terms.

Stripe signs each delivery with the endpoint's secret: the ``Stripe-Signature`` header
holds a timestamp ``t`` and ``v1`` HMAC-SHA256 signatures of ``t.payload``
(https://docs.stripe.com/webhooks#verify-events). ``stripe.Webhook.construct_event``
checks the signature in constant time and refuses a timestamp outside the tolerance, so
a captured delivery cannot be replayed later. During a secret rotation both the old and
the new secret are accepted (Stripe signs with both while the old one lives).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

import stripe

from proxy.domain.errors import InvalidSignature
from proxy.partners.ports import CardUpdate, PartnerEvent

# Stripe's default, and what its SDK applies: five minutes either way.
TOLERANCE_SECONDS: Final = 300
# Ids by Stripe's promise only: its alphabet, at most 255 characters; the prefix may
# change without a new API version (https://docs.stripe.com/upgrades).
_EVENT_ID_RE = re.compile(r"[A-Za-z0-9_]{1,255}")
# Event types become metric labels: only Stripe's dotted lower-case words pass as sent.
_TYPE_RE = re.compile(r"[a-z_]{1,40}(\.[a-z_]{1,40}){1,3}")
_PM_RE = _EVENT_ID_RE
_CUSTOMER_RE = _EVENT_ID_RE
_BRAND_RE = re.compile(r"[a-z_]{1,20}")
_LAST4_RE = re.compile(r"[0-9]{4}")
_ACTIONS: Final = {
    "payment_method.automatically_updated": "updated",
    "payment_method.updated": "updated",
    "payment_method.detached": "detached",
    "customer.deleted": "customer_deleted",
    "mandate.updated": "mandate",
}


def verify_event(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    tolerance: int = TOLERANCE_SECONDS,
) -> PartnerEvent:
    """The event ``payload`` holds, once a secret in ``secrets`` verifies ``header``."""
    if not header:
        raise InvalidSignature("missing")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignature("malformed") from None
    reason = "invalid"
    for secret in secrets:
        try:
            stripe.Webhook.construct_event(text, header, secret, tolerance=tolerance)
        except stripe.SignatureVerificationError as exc:
            # The SDK says which check failed only in its message.
            if "tolerance" in str(exc):
                reason = "stale"
            continue
        except (ValueError, AttributeError, TypeError):
            # Signed, but not JSON or not an object: the SDK fails building its Event.
            raise InvalidSignature("malformed") from None
        return _event(json.loads(text))
    raise InvalidSignature(reason)


def _event(data: Any) -> PartnerEvent:
    """A signed event in our terms; a shape we cannot read is refused as malformed."""
    if not isinstance(data, dict):
        raise InvalidSignature("malformed")
    event_id, event_type, created = data.get("id"), data.get("type"), data.get("created")
    obj = (data.get("data") or {}).get("object") if isinstance(data.get("data"), dict) else None
    if (
        not isinstance(event_id, str)
        or not _EVENT_ID_RE.fullmatch(event_id)
        or not isinstance(event_type, str)
        or not _TYPE_RE.fullmatch(event_type)
        or not isinstance(created, int)
        or isinstance(created, bool)
        or not isinstance(obj, dict)
    ):
        raise InvalidSignature("malformed")
    action = _ACTIONS.get(event_type, "ignored")
    base = PartnerEvent(id=event_id, type=event_type, created=created, action="ignored")
    if action == "updated":
        card = obj.get("card") if isinstance(obj.get("card"), dict) else None
        return replace(
            base,
            action=action,
            payment_method=_match(_PM_RE, obj.get("id")),
            customer=_match(_CUSTOMER_RE, obj.get("customer")),
            card=_card(card) if card is not None else None,
        )
    if action == "detached":
        return replace(base, action=action, payment_method=_match(_PM_RE, obj.get("id")))
    if action == "customer_deleted":
        return replace(base, action=action, customer=_match(_CUSTOMER_RE, obj.get("id")))
    if action == "mandate":
        status = obj.get("status")
        return replace(
            base,
            action="mandate_inactive" if status == "inactive" else "ignored",
            payment_method=_match(_PM_RE, _id(obj.get("payment_method"))),
        )
    return replace(base, action="ignored")


def _id(value: Any) -> Any:
    """An object id, whether the field was expanded or not."""
    return value.get("id") if isinstance(value, dict) else value


def _match(pattern: re.Pattern[str], value: Any) -> str | None:
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


def _int(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _card(card: dict[str, Any]) -> CardUpdate:
    """The storable part of a card: brand, last four, expiry; anything off-shape is dropped."""
    # Stripe's brand words are ours (proxy.domain.card names brands as Stripe does).
    return CardUpdate(
        brand=_match(_BRAND_RE, card.get("brand")),
        last4=_match(_LAST4_RE, card.get("last4")),
        exp_month=_int(card.get("exp_month"), 1, 12),
        exp_year=_int(card.get("exp_year"), 2000, 2199),
    )
