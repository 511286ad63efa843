"""A partner customer deleted at Stripe, not by the proxy: a clear, distinct error, and
an erasure that clears the way for a new partner customer."""

from __future__ import annotations

import aiohttp
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe

from tests.cards import PARTNER_CARDS
from tests.conftest import RunningProxy
from tests.helpers import create, resolve
from tests.proxy.test_cards_api import card_body


async def delete_at_partner(localstripe: Localstripe, customer: str) -> None:
    """Delete a customer at the partner directly (as the dashboard or another system would)."""
    async with (
        aiohttp.ClientSession() as http,
        http.delete(
            f"{localstripe.base_url}/v1/customers/{customer}",
            headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
        ) as resp,
    ):
        assert resp.status == 200


async def test_saving_for_a_customer_deleted_at_the_partner_is_a_distinct_409(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """Not a 502: 409 partner_customer_deleted names the way out; erasure then clears it."""
    first = await create(proxy, "/v1/cards", card_body(customer_ref="cust-gone"))
    customer = (await resolve(proxy, first["token"]))["partner_customer"]
    await delete_at_partner(localstripe, customer)
    status, answer, _ = await proxy.request(
        "POST",
        "/v1/cards",
        client="checkout",
        json=card_body(PARTNER_CARDS[1], customer_ref="cust-gone"),
    )
    assert status == 409, answer
    assert answer is not None
    assert answer["error"]["code"] == "partner_customer_deleted"
    status, erased, _ = await proxy.request("DELETE", "/v1/customers/cust-gone", client="eraser")
    assert status == 200, erased
    again = await create(proxy, "/v1/cards", card_body(customer_ref="cust-gone"))
    assert (await resolve(proxy, again["token"]))["partner_customer"] != customer
