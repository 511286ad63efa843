"""The sandbox partner's front keeps the Stripe rules the billing path depends on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import stripe
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe

from tests.sandbox_front import reset_front, script_fault

IBAN = "DE89370400440532013000"
ONLINE = {"ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0"}


def sdk(localstripe: Localstripe) -> stripe.StripeClient:
    """The stripe SDK pointed at the sandbox."""
    return stripe.StripeClient(
        SANDBOX_API_KEY, base_addresses={"api": localstripe.base_url}, max_network_retries=0
    )


async def call(localstripe: Localstripe, method: str, path: str, **params: Any) -> Any:
    """One raw SDK request to the sandbox, off the event loop."""
    response = await asyncio.to_thread(sdk(localstripe).raw_request, method, path, **params)
    return response.data if hasattr(response, "data") else response


async def sepa_on_customer(localstripe: Localstripe) -> tuple[str, str]:
    """A fresh customer and an unattached sepa_debit PaymentMethod."""
    customer = await call(localstripe, "post", "/v1/customers")
    pm = await call(
        localstripe,
        "post",
        "/v1/payment_methods",
        type="sepa_debit",
        sepa_debit={"iban": IBAN},
        billing_details={"name": "Greta Garbo", "email": "g@example.se"},
    )
    return customer["id"], pm["id"]


async def test_sepa_payment_method_has_no_mandate_of_its_own(localstripe: Localstripe) -> None:
    """Stripe's sepa_debit PaymentMethod has no mandate_reference (a Sources-era field)."""
    _, pm = await sepa_on_customer(localstripe)
    fetched = await call(localstripe, "get", f"/v1/payment_methods/{pm}")
    assert "mandate_reference" not in fetched["sepa_debit"]
    assert "mandate_url" not in fetched["sepa_debit"]


async def test_setup_intent_with_mandate_data_makes_a_mandate(localstripe: Localstripe) -> None:
    """A confirmed SetupIntent with online acceptance attaches the method and has a mandate."""
    customer, pm = await sepa_on_customer(localstripe)
    intent = await call(
        localstripe,
        "post",
        "/v1/setup_intents",
        customer=customer,
        payment_method=pm,
        payment_method_types=["sepa_debit"],
        usage="off_session",
        confirm=True,
        mandate_data={"customer_acceptance": {"type": "online", "online": ONLINE}},
    )
    assert intent["status"] == "succeeded"
    assert intent["mandate"].startswith("mandate_")
    again = await call(localstripe, "get", f"/v1/setup_intents/{intent['id']}")
    assert again["mandate"] == intent["mandate"]
    mandate = await call(localstripe, "get", f"/v1/mandates/{intent['mandate']}")
    assert mandate["payment_method"] == pm
    assert mandate["customer_acceptance"]["online"] == ONLINE
    fetched = await call(localstripe, "get", f"/v1/payment_methods/{pm}")
    assert fetched["customer"] == customer


@pytest.mark.parametrize(
    ("extra", "confirm"),
    [
        ({"customer_acceptance": {"type": "online", "online": {"ip_address": "1.2.3.4"}}}, True),
        ({"customer_acceptance": {"type": "somehow"}}, True),
        ({"customer_acceptance": {"type": "online", "online": ONLINE}}, False),
    ],
)
async def test_setup_intent_refuses_incomplete_mandate_data(
    localstripe: Localstripe, extra: dict[str, Any], confirm: bool
) -> None:
    """Online acceptance needs IP and user agent, and mandate_data needs confirm=true."""
    customer, pm = await sepa_on_customer(localstripe)
    with pytest.raises(stripe.InvalidRequestError):
        await call(
            localstripe,
            "post",
            "/v1/setup_intents",
            customer=customer,
            payment_method=pm,
            payment_method_types=["sepa_debit"],
            confirm=confirm,
            mandate_data=extra,
        )


async def test_unknown_mandate_is_404(localstripe: Localstripe) -> None:
    """GET /v1/mandates/{id} answers Stripe's resource_missing for an unknown mandate."""
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await call(localstripe, "get", "/v1/mandates/mandate_nope")
    assert missing.value.http_status == 404


async def test_a_keyed_answer_is_saved_and_replayed_500s_included(
    localstripe: Localstripe,
) -> None:
    """Stripe saves the first answer for a key, a 500 too, and refuses other parameters."""
    await reset_front(localstripe)
    await script_fault(localstripe, "/v1/customers", 500, {"error": {"type": "api_error"}})
    for _ in range(2):
        with pytest.raises(stripe.APIError) as info:
            await call(localstripe, "post", "/v1/customers", idempotency_key="k500")
        assert info.value.http_status == 500
    assert (info.value.headers or {}).get("idempotent-replayed") == "true"
    first = await call(localstripe, "post", "/v1/customers", idempotency_key="k200")
    again = await call(localstripe, "post", "/v1/customers", idempotency_key="k200")
    assert again["id"] == first["id"]
    with pytest.raises(stripe.IdempotencyError):
        await call(
            localstripe, "post", "/v1/customers", idempotency_key="k200", metadata={"a": "b"}
        )
    await reset_front(localstripe)
