"""Stripe webhook signatures checked by the SDK, and events reduced to what sync acts on."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.domain.errors import InvalidSignature
from proxy.partners.stripe_events import verify_event
from tests.stripe_events import NEXT_SECRET, OTHER_SECRET, SECRET, card_pm, event, sign

BODY = event("payment_method.updated", card_pm("pm_1Abc", "cus_9Xyz", last4="1234"))


def test_signed_event_is_reduced_to_its_card_update() -> None:
    """A valid signature yields the event's id, time and the card's storable fields."""
    verified = verify_event(BODY, sign(BODY, SECRET), [SECRET])
    data = json.loads(BODY)
    assert (verified.id, verified.type, verified.created) == (
        data["id"],
        "payment_method.updated",
        data["created"],
    )
    assert (verified.action, verified.payment_method, verified.customer) == (
        "updated",
        "pm_1Abc",
        "cus_9Xyz",
    )
    assert verified.card is not None
    assert (verified.card.last4, verified.card.exp_month, verified.card.exp_year) == (
        "1234",
        12,
        2034,
    )


@settings(max_examples=60, deadline=None)
@given(position=st.integers(min_value=0, max_value=len(BODY) - 1), flip=st.integers(1, 255))
def test_any_changed_byte_breaks_the_signature(position: int, flip: int) -> None:
    """Changing any byte of a signed payload makes it refused."""
    tampered = bytearray(BODY)
    tampered[position] ^= flip
    with pytest.raises(InvalidSignature):
        verify_event(bytes(tampered), sign(BODY, SECRET), [SECRET])


@settings(max_examples=30, deadline=None)
@given(secret=st.text(min_size=1, max_size=64))
def test_a_signature_by_another_secret_is_refused(secret: str) -> None:
    """Only a configured secret's signature verifies, whatever the other secret is."""
    if secret == SECRET:
        return
    with pytest.raises(InvalidSignature) as caught:
        verify_event(BODY, sign(BODY, secret), [SECRET])
    assert caught.value.reason == "invalid"


def test_either_secret_of_a_rotation_verifies() -> None:
    """With two secrets configured, a signature by either is accepted, by a third refused."""
    both = [SECRET, NEXT_SECRET]
    assert verify_event(BODY, sign(BODY, NEXT_SECRET), both).action == "updated"
    assert verify_event(BODY, sign(BODY, SECRET), both).action == "updated"
    with pytest.raises(InvalidSignature):
        verify_event(BODY, sign(BODY, OTHER_SECRET), both)


def test_stale_missing_and_garbled_headers_are_refused_with_their_reason() -> None:
    """A timestamp past the 300 s tolerance is stale; no header is missing; junk is invalid."""
    old = sign(BODY, SECRET, at=int(time.time()) - 301)
    for header, reason in ((old, "stale"), (None, "missing"), ("t=1,v9=zz", "invalid")):
        with pytest.raises(InvalidSignature) as caught:
            verify_event(BODY, header, [SECRET])
        assert caught.value.reason == reason
        assert caught.value.status == 400
        assert caught.value.code == "invalid_signature"


def test_signed_but_malformed_events_are_refused() -> None:
    """A correctly signed body that is not an event of Stripe's shape is refused as malformed."""
    slash_id = b'{"id": "evt/1", "type": "a.b", "created": 1, "data": {"object": {}}}'
    for body in (b"[1, 2]", slash_id):
        with pytest.raises(InvalidSignature) as caught:
            verify_event(body, sign(body, SECRET), [SECRET])
        assert caught.value.reason == "malformed"


def test_types_sync_does_not_act_on_are_ignored() -> None:
    """An unknown type, and a mandate update to a status other than inactive, are ignored."""
    unknown = event("charge.refunded", {"id": "ch_1"})
    active = event(
        "mandate.updated", {"id": "mandate_1", "payment_method": "pm_1", "status": "active"}
    )
    inactive = event(
        "mandate.updated", {"id": "mandate_1", "payment_method": "pm_1", "status": "inactive"}
    )
    assert verify_event(unknown, sign(unknown, SECRET), [SECRET]).action == "ignored"
    assert verify_event(active, sign(active, SECRET), [SECRET]).action == "ignored"
    revoked = verify_event(inactive, sign(inactive, SECRET), [SECRET])
    assert (revoked.action, revoked.payment_method) == ("mandate_inactive", "pm_1")
