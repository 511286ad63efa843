"""The Stripe adapter against localstripe: success, error translation, no SDK leaks."""

from __future__ import annotations

import logging
from datetime import date

import pytest
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe, free_port

from proxy.domain.errors import PartnerError, PartnerUnavailable
from proxy.domain.requests import parse_card_request
from proxy.partners.stripe import STRIPE_API_VERSION, StripePartner, silence_sdk_logging
from tests.cards import VISA
from tests.sandbox_front import recorded_requests

TODAY = date(2026, 11, 25)


def visa_request() -> object:
    """A validated card request for the test visa."""
    return parse_card_request(
        {"number": VISA.number, "exp_month": 12, "exp_year": 2030, "cvc": VISA.cvc}, today=TODAY
    )


async def test_create_card_returns_reference_and_details(stripe_partner: StripePartner) -> None:
    """localstripe creates a pm_ PaymentMethod; we get its id, fingerprint and last4."""
    created = await stripe_partner.create_card(visa_request())  # type: ignore[arg-type]
    assert created.reference.startswith("pm_")
    assert created.last4 == VISA.number[-4:]
    assert created.fingerprint


async def test_unreachable_partner_is_partner_unavailable() -> None:
    """A closed port answers 503-class PartnerUnavailable with our own message."""
    partner = StripePartner(SANDBOX_API_KEY, api_base=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(PartnerUnavailable) as info:
            await partner.create_card(visa_request())  # type: ignore[arg-type]
    finally:
        await partner.close()
    assert info.value.status == 503
    assert info.value.__cause__ is None
    assert VISA.number not in str(info.value)


async def test_refused_credentials_are_partner_auth_failed(localstripe: Localstripe) -> None:
    """A key the partner refuses becomes a 502 partner_auth_failed, not the SDK's text."""
    partner = StripePartner("rk_refused_by_localstripe", api_base=localstripe.base_url)
    try:
        with pytest.raises(PartnerError) as info:
            await partner.create_card(visa_request())  # type: ignore[arg-type]
    finally:
        await partner.close()
    assert info.value.code == "partner_auth_failed"
    assert info.value.status == 502


async def test_sdk_debug_logging_is_silenced(
    stripe_partner: StripePartner, caplog: pytest.LogCaptureFixture
) -> None:
    """Even at DEBUG, the SDK's request-body log lines (card number, CVC) never get emitted."""
    silence_sdk_logging()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("stripe").setLevel(logging.DEBUG)
        await stripe_partner.create_card(visa_request())  # type: ignore[arg-type]
    assert not [r for r in caplog.records if r.name.startswith("stripe")]
    assert VISA.number not in caplog.text


async def test_every_request_names_the_pinned_api_version(
    stripe_partner: StripePartner, localstripe: Localstripe
) -> None:
    """The Stripe-Version header is the pinned version, not whatever the SDK ships with."""
    created = await stripe_partner.create_card(visa_request())  # type: ignore[arg-type]
    await stripe_partner.get_payment_method(created.reference)
    recorded = await recorded_requests(localstripe)
    mine = [r for r in recorded if created.reference in (r["path"] or "")]
    mine.append(next(r for r in reversed(recorded) if r["path"] == "/v1/payment_methods"))
    assert {r["stripe_version"] for r in mine} == {STRIPE_API_VERSION}


async def test_a_post_carries_the_given_key_or_a_fresh_one(
    stripe_partner: StripePartner, localstripe: Localstripe
) -> None:
    """A POST sends the caller's idempotency key unchanged; without one, a new key per call."""
    given = await stripe_partner.create_card(
        visa_request(),  # type: ignore[arg-type]
        idempotency_key="tp_given_key",
    )
    first = await stripe_partner.create_card(visa_request())  # type: ignore[arg-type]
    second = await stripe_partner.create_card(visa_request())  # type: ignore[arg-type]
    assert len({given.reference, first.reference, second.reference}) == 3
    recorded = await recorded_requests(localstripe)
    keys = [r["idempotency_key"] for r in recorded if r["path"] == "/v1/payment_methods"][-3:]
    assert keys[0] == "tp_given_key"
    assert None not in keys
    assert keys[1] != keys[2]
