"""Stripe's error answers classified by their body, as Stripe documents them.

Each body below is copied from Stripe's documented error objects
(https://docs.stripe.com/api/errors, https://docs.stripe.com/error-codes,
https://docs.stripe.com/declines/codes); the sandbox front answers with it, and the
real adapter and retry layer see it over a socket.
"""

from __future__ import annotations

import json
from datetime import date

import pytest
from tokenproxy_sandbox.launcher import Localstripe

from proxy.domain.errors import PartnerDeclined, PartnerError, PartnerUnavailable
from proxy.domain.requests import CardRequest, parse_card_request
from proxy.partners.resilience import CircuitBreaker, CircuitState, ResilientPartner, RetryPolicy
from proxy.partners.stripe import StripePartner
from tests.cards import VISA
from tests.sandbox_front import recorded_requests, reset_front, script_fault

TODAY = date(2026, 11, 25)
PM_PATH = "/v1/payment_methods"

CARD_DECLINED = {
    "error": {
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "doc_url": "https://stripe.com/docs/error-codes/card-declined",
        "message": "Your card has insufficient funds.",
        "type": "card_error",
    }
}
INCORRECT_ZIP = {
    "error": {
        "code": "incorrect_zip",
        "doc_url": "https://stripe.com/docs/error-codes/incorrect-zip",
        "message": "The zip code you supplied failed validation.",
        "param": "billing_details[address][postal_code]",
        "type": "card_error",
    }
}
# A 402 that is not a card's refusal: Stripe's "request failed" for a valid request.
INVALID_REQUEST_402 = {
    "error": {
        "code": "payment_method_unactivated",
        "doc_url": "https://stripe.com/docs/error-codes/payment-method-unactivated",
        "message": "The operation cannot be performed as the payment method used has not "
        "been activated.",
        "type": "invalid_request_error",
    }
}
KEY_IN_USE = {
    "error": {
        "code": "idempotency_key_in_use",
        "doc_url": "https://stripe.com/docs/error-codes/idempotency-key-in-use",
        "message": "There is currently another in-progress request using this Idempotent "
        "Key (that probably means you submitted twice, and the other request is still going "
        "through): tp_1. Please try again later.",
        "type": "invalid_request_error",
    }
}
IDEMPOTENCY_MISMATCH = {
    "error": {
        "message": "Keys for idempotent requests can only be used with the same parameters "
        "they were first used with. Try using a key other than 'tp_1' if you meant to "
        "execute a different request.",
        "type": "idempotency_error",
    }
}
RESOURCE_MISSING = {
    "error": {
        "code": "resource_missing",
        "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
        "message": "No such customer: 'cus_gone'",
        "param": "customer",
        "type": "invalid_request_error",
    }
}
PERMISSION = {
    "error": {
        "message": "The provided key 'rk_test_***' does not have the required permissions "
        "for this endpoint on account 'acct_1'. Having the 'rak_payment_method_write' "
        "permission would allow this request to continue.",
        "type": "invalid_request_error",
    }
}
API_ERROR = {"error": {"message": "An unknown error occurred", "type": "api_error"}}


def card() -> CardRequest:
    """A validated card request for the test visa."""
    return parse_card_request(
        {"number": VISA.number, "exp_month": 12, "exp_year": 2030, "cvc": VISA.cvc}, today=TODAY
    )


async def refused(partner: StripePartner) -> PartnerError:
    """The error creating the test card ends in."""
    with pytest.raises(PartnerError) as info:
        await partner.create_card(card())
    return info.value


async def test_card_error_is_a_decline_with_its_decline_code(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """A 402 card_error is a final decline carrying Stripe's code and decline_code."""
    await script_fault(localstripe, PM_PATH, 402, CARD_DECLINED)
    error = await refused(partner)
    assert isinstance(error, PartnerDeclined)
    assert (error.code, error.decline_code, error.final) == (
        "card_declined",
        "insufficient_funds",
        True,
    )


async def test_a_failed_postal_code_check_keeps_its_code(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """incorrect_zip stays itself, so the checkout can point the shopper at the postal code."""
    await script_fault(localstripe, PM_PATH, 402, INCORRECT_ZIP)
    error = await refused(partner)
    assert isinstance(error, PartnerDeclined)
    assert (error.code, error.final) == ("incorrect_zip", True)


async def test_a_402_that_is_no_card_error_is_not_a_decline(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """A 402 whose body says invalid_request_error is a rejected request, not card_declined."""
    await script_fault(localstripe, PM_PATH, 402, INVALID_REQUEST_402)
    error = await refused(partner)
    assert not isinstance(error, PartnerDeclined)
    assert error.code == "partner_rejected_request"
    assert not error.retryable


async def test_key_in_use_is_retried_and_never_trips_the_breaker(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """409 idempotency_key_in_use is retried with the same key and counts as no failure."""
    await script_fault(localstripe, PM_PATH, 409, KEY_IN_USE, times=2)
    breaker = CircuitBreaker(failures=1)
    resilient = ResilientPartner(
        partner, policy=RetryPolicy(max_retries=2, backoff_base=0.0), breaker=breaker
    )
    created = await resilient.create_card(card())
    assert created.reference.startswith("pm_")
    assert breaker.state is CircuitState.CLOSED


async def test_key_in_use_is_waited_out_beyond_the_retry_count(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """A key in use (another replica's request on a derived key) is retried until it
    answers, past max_retries: only the time budget ends the wait."""
    await script_fault(localstripe, PM_PATH, 409, KEY_IN_USE, times=5)
    resilient = ResilientPartner(partner, policy=RetryPolicy(max_retries=1, backoff_base=0.0))
    created = await resilient.create_card(card())
    assert created.reference.startswith("pm_")


async def test_key_in_use_past_the_time_budget_is_partner_busy(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """Still in use when the time budget runs out: 503 partner_busy, retryable."""
    await reset_front(localstripe)
    await script_fault(
        localstripe, PM_PATH, 409, KEY_IN_USE, headers={"Retry-After": "0.1"}, times=1000
    )
    resilient = ResilientPartner(partner, policy=RetryPolicy(max_retries=1, budget=1.0))
    try:
        with pytest.raises(PartnerUnavailable) as info:
            await resilient.create_card(card())
        sent = [r for r in await recorded_requests(localstripe) if r["path"] == PM_PATH]
    finally:
        await reset_front(localstripe)
    assert (info.value.code, info.value.retryable) == ("partner_busy", True)
    # About ten attempts, 0.1 s apart: more than the two one counted retry allows.
    assert len(sent) >= 3


async def test_key_in_use_after_the_retries_is_a_transient_503(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """A key still in use at the partner answers 503 partner_busy: retry, not final."""
    await script_fault(localstripe, PM_PATH, 409, KEY_IN_USE)
    error = await refused(partner)
    assert isinstance(error, PartnerUnavailable)
    assert (error.code, error.retryable, error.final) == ("partner_busy", True, False)


async def test_idempotency_mismatch_is_its_own_final_error(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """An idempotency_error for other parameters is partner_idempotency_error, not retried."""
    await script_fault(localstripe, PM_PATH, 400, IDEMPOTENCY_MISMATCH)
    error = await refused(partner)
    assert (error.code, error.retryable) == ("partner_idempotency_error", False)


async def test_missing_object_and_missing_permission_are_told_apart(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """resource_missing and a restricted key's 403 are distinct codes, neither retried."""
    await script_fault(localstripe, PM_PATH, 400, RESOURCE_MISSING)
    missing = await refused(partner)
    await script_fault(localstripe, PM_PATH, 403, PERMISSION)
    denied = await refused(partner)
    assert (missing.code, denied.code) == ("partner_resource_missing", "partner_permission_denied")
    assert not missing.retryable
    assert not denied.retryable


async def test_api_error_is_retryable_and_unhealthy(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """A 500 api_error may be retried and counts against the partner's health."""
    await script_fault(localstripe, PM_PATH, 500, API_ERROR)
    error = await refused(partner)
    assert (error.code, error.retryable, error.partner_status) == ("partner_error", True, 500)


async def test_errors_are_logged_with_request_id_type_code_and_param_never_message(
    partner: StripePartner, localstripe: Localstripe, log_stream: object
) -> None:
    """The log line names Stripe's request id, type, code and param, and not its message."""
    await script_fault(
        localstripe, PM_PATH, 400, RESOURCE_MISSING, headers={"Request-Id": "req_LoggedOne"}
    )
    await refused(partner)
    lines = [
        json.loads(line)
        for line in log_stream.getvalue().splitlines()  # type: ignore[attr-defined]
        if "req_LoggedOne" in line
    ]
    assert len(lines) == 1
    line = lines[0]
    assert line["event"] == "partner_error"
    assert (line["error_type"], line["partner_code"], line["partner_param"]) == (
        "invalid_request_error",
        "resource_missing",
        "customer",
    )
    assert "cus_gone" not in json.dumps(line)


async def test_a_5xx_saved_under_the_key_is_not_replayed_to_the_retry(
    partner: StripePartner, localstripe: Localstripe
) -> None:
    """Stripe replays a saved 500 to the same key; the retry goes out under a fresh key."""
    await script_fault(localstripe, PM_PATH, 500, API_ERROR)
    resilient = ResilientPartner(partner, policy=RetryPolicy(max_retries=2, backoff_base=0.0))
    created = await resilient.create_card(card(), idempotency_key="tp_saved500")
    assert created.reference.startswith("pm_")
    # The first key still answers the saved 500, as Stripe would for a day.
    again = ResilientPartner(partner, policy=RetryPolicy(max_retries=0))
    with pytest.raises(PartnerError) as info:
        await again.create_card(card(), idempotency_key="tp_saved500")
    assert info.value.partner_status == 500
