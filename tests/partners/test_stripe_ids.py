"""Stripe object ids checked by what Stripe promises (its alphabet and 255 characters),
and the idempotency keys the proxy makes.

https://docs.stripe.com/upgrades counts a change of an id's length or format, prefix
included, as backwards-compatible, and says ids never exceed 255 characters.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenproxy_sandbox.launcher import Localstripe

from pandetect import holds_pan
from proxy.domain.errors import PartnerError
from proxy.partners.resilience import fresh_partner_key, new_partner_key
from proxy.partners.stripe import StripePartner, _object_id
from tests.sandbox_front import recorded_requests, script_fault

LONG_CUSTOMER = "cust2_" + "Ab9" * 83  # 255 characters, a prefix Stripe does not use today
LONG_PM = "paymeth_" + "x" * 247


async def test_a_long_id_with_a_new_prefix_is_taken_and_used(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """A 255-character customer id of a new prefix is accepted, then used in a path."""
    assert len(LONG_CUSTOMER) == 255
    await script_fault(localstripe, "/v1/customers", 200, {"id": LONG_CUSTOMER})
    assert await partner.create_customer() == LONG_CUSTOMER
    await script_fault(localstripe, f"/v1/payment_methods/{LONG_PM}/attach", 200, {"id": LONG_PM})
    await partner.attach(LONG_PM, LONG_CUSTOMER)
    await script_fault(
        localstripe, f"/v1/customers/{LONG_CUSTOMER}", 200, {"deleted": True}, method="DELETE"
    )
    assert await partner.delete_customer(LONG_CUSTOMER) is True
    paths = {r["path"] for r in await recorded_requests(localstripe)}
    assert f"/v1/customers/{LONG_CUSTOMER}" in paths
    assert f"/v1/payment_methods/{LONG_PM}/attach" in paths


@pytest.mark.parametrize(
    "reference",
    ["", "x" * 256, "pm_1/../../v1/customers", "pm_1?expand=x", "pm 1", "pm_1%2F", "pm_é"],
)
def test_ids_outside_stripes_alphabet_or_length_never_reach_a_path(reference: str) -> None:
    """An id that could change the URL, or is longer than Stripe allows, is refused."""
    with pytest.raises(PartnerError) as info:
        _object_id(reference)
    assert info.value.code == "partner_bad_reference"


@given(st.text(max_size=300))
def test_an_accepted_id_is_only_letters_digits_and_underscores(reference: str) -> None:
    """Whatever is accepted into a URL path is 1-255 of [A-Za-z0-9_]."""
    try:
        accepted = _object_id(reference)
    except PartnerError:
        return
    assert 1 <= len(accepted) <= 255
    assert all(c.isascii() and (c.isalnum() or c == "_") for c in accepted)


def test_partner_keys_never_look_like_a_card_number() -> None:
    """Generated partner keys (audited with their outbox row) hold no card-number-like run:
    of the same 20,000 made from hex about 50 would; none of these, and all within 255."""
    keys = [new_partner_key() for _ in range(10_000)]
    keys += [fresh_partner_key(key) for key in keys]
    assert not [key for key in keys if holds_pan(key)]
    assert len(set(keys)) == len(keys)
    assert max(len(key) for key in keys) <= 255
