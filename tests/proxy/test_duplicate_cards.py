"""The same card saved twice on one customer answers the token it already has, rather
than pile up saved methods toward Stripe's per-customer limit."""

from __future__ import annotations

from tests.cards import PARTNER_CARDS
from tests.conftest import RunningProxy
from tests.helpers import create
from tests.proxy.test_cards_api import card_body


async def test_the_same_card_for_the_same_customer_reuses_its_token(proxy: RunningProxy) -> None:
    """Same number and expiry, same customer: one token; another customer or card: a new one."""
    first = await create(proxy, "/v1/cards", card_body(customer_ref="cust-dup"))
    again = await create(proxy, "/v1/cards", card_body(customer_ref="cust-dup"))
    assert again["token"] == first["token"]
    other_customer = await create(proxy, "/v1/cards", card_body(customer_ref="cust-dup-2"))
    other_card = await create(
        proxy, "/v1/cards", card_body(PARTNER_CARDS[1], customer_ref="cust-dup")
    )
    renewed = await create(proxy, "/v1/cards", card_body(customer_ref="cust-dup", exp_year=2035))
    assert (
        len({first["token"], other_customer["token"], other_card["token"], renewed["token"]}) == 4
    )
    status, listing, _ = await proxy.request(
        "GET", "/v1/customers/cust-dup/tokens", client="orders"
    )
    assert status == 200
    assert listing is not None
    assert len(listing["data"]) == 3
