"""Stripe's own card facts and mode, kept per token: brand, display_brand, funding,
country, expiry, and livemode (cards and bank accounts), which a resolve under the other
mode refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from tokenproxy_sandbox.launcher import Localstripe

from tests.cards import VISA
from tests.conftest import RunningProxy
from tests.helpers import bank_body, create, resolve
from tests.ibans import VALID
from tests.proxy.test_cards_api import card_body
from tests.sandbox_front import reset_front, script_fault


def payment_method(**overrides: Any) -> dict[str, Any]:
    """A card PaymentMethod as Stripe documents it (the card hash trimmed to our fields)."""
    card = {
        "brand": "visa",
        "display_brand": "cartes_bancaires",
        "funding": "debit",
        "country": "FR",
        "exp_month": 12,
        "exp_year": 2034,
        "last4": VISA.number[-4:],
        "fingerprint": "Xt5EWLLDS7FJjR1c",
    }
    doc = {
        "id": "pm_1FactsFromStripe",
        "object": "payment_method",
        "type": "card",
        "customer": None,
        "livemode": False,
        "card": card,
    }
    doc.update(overrides)
    return doc


@pytest.fixture
async def front(localstripe: Localstripe) -> AsyncIterator[Localstripe]:
    """The sandbox partner with no scripted answer left over."""
    await reset_front(localstripe)
    yield localstripe
    await reset_front(localstripe)


async def test_stripes_brand_funding_country_and_expiry_are_kept_and_shown(
    proxy: RunningProxy, front: Localstripe
) -> None:
    """The token shows what Stripe said of the card, not the proxy's own IIN guess."""
    await script_fault(front, "/v1/payment_methods", 200, payment_method())
    token = await create(proxy, "/v1/cards", card_body())
    assert (token["brand"], token["display_brand"], token["funding"], token["country"]) == (
        "visa",
        "cartes_bancaires",
        "debit",
        "FR",
    )
    status, view, _ = await proxy.request("GET", f"/v1/tokens/{token['token']}", client="orders")
    assert status == 200
    assert view is not None
    assert (view["exp_month"], view["exp_year"], view["funding"]) == (12, 2034, "debit")


async def test_a_live_token_is_not_resolved_with_a_test_key(
    proxy: RunningProxy, front: Localstripe
) -> None:
    """A token Stripe made in live mode is refused (409) under the proxy's test key."""
    await script_fault(front, "/v1/payment_methods", 200, payment_method(livemode=True))
    live = await create(proxy, "/v1/cards", card_body())
    status, answer, _ = await proxy.request("GET", f"/v1/tokens/{live['token']}", client="billing")
    assert status == 409
    assert answer is not None
    assert answer["error"]["code"] == "partner_mode_mismatch"
    # A test-mode token of the same proxy resolves.
    test_token = await create(proxy, "/v1/cards", card_body())
    assert (await resolve(proxy, test_token["token"]))["partner_reference"].startswith("pm_")


async def test_a_live_bank_token_is_not_resolved_with_a_test_key(
    proxy: RunningProxy, front: Localstripe
) -> None:
    """A SEPA debit method Stripe made in live mode is refused (409) under a test key too."""
    case = VALID[0]
    sepa = {
        "id": "pm_1LiveSepaDebit",
        "object": "payment_method",
        "type": "sepa_debit",
        "customer": None,
        "livemode": True,
        "sepa_debit": {"country": case.country, "last4": case.iban[-4:], "fingerprint": None},
    }
    await script_fault(front, "/v1/payment_methods", 200, sepa)
    live = await create(proxy, "/v1/bank-accounts", bank_body(case))
    status, answer, _ = await proxy.request("GET", f"/v1/tokens/{live['token']}", client="billing")
    assert status == 409
    assert answer is not None
    assert answer["error"]["code"] == "partner_mode_mismatch"
    test_token = await create(proxy, "/v1/bank-accounts", bank_body(case))
    assert (await resolve(proxy, test_token["token"]))["partner_reference"].startswith("pm_")
