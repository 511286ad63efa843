"""Erasure and what the partner holds: a preview that lists it, and an answer that says
deleting the partner customer cancelled its subscriptions (Stripe does so at once)."""

from __future__ import annotations

from typing import Any

import aiohttp
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe

from tests.conftest import RunningProxy
from tests.helpers import create, resolve
from tests.proxy.test_cards_api import card_body


async def partner_post(localstripe: Localstripe, path: str, form: dict[str, str]) -> Any:
    """POST to the sandbox partner with the sandbox key, as a billing service would."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            localstripe.base_url + path,
            data=form,
            headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
        return body


async def subscribe(localstripe: Localstripe, customer: str, payment_method: str) -> str:
    """A monthly subscription for the partner customer, charged to its saved card."""
    await partner_post(
        localstripe,
        f"/v1/customers/{customer}",
        {"invoice_settings[default_payment_method]": payment_method},
    )
    plan = await partner_post(
        localstripe,
        "/v1/plans",
        {"amount": "900", "currency": "sek", "interval": "month", "product[name]": "Box"},
    )
    sub = await partner_post(
        localstripe,
        "/v1/subscriptions",
        {
            "customer": customer,
            "items[0][plan]": plan["id"],
        },
    )
    return str(sub["id"])


async def test_preview_lists_what_the_partner_holds_and_erasure_says_it_cancelled(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """The preview counts tokens, methods and subscriptions; erasure reports them cancelled."""
    token = await create(proxy, "/v1/cards", card_body(customer_ref="cust-subs"))
    resolved = await resolve(proxy, token["token"])
    await subscribe(localstripe, resolved["partner_customer"], resolved["partner_reference"])
    status, preview, _ = await proxy.request(
        "GET", "/v1/customers/cust-subs/erasure-preview", client="eraser"
    )
    assert status == 200, preview
    assert preview is not None
    assert preview["tokens"] == {"card": 1}
    assert preview["partner"] == {
        "customer": True,
        "payment_methods": {"card": 1},
        "subscriptions": 1,
    }
    status, erased, _ = await proxy.request("DELETE", "/v1/customers/cust-subs", client="eraser")
    assert status == 200, erased
    assert erased is not None
    assert erased["partner"]["subscriptions_cancelled"] is True
