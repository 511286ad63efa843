"""Every payment method the proxy makes names its vault token at the partner, never card data."""

from __future__ import annotations

from tokenproxy_sandbox.launcher import Localstripe

from tests.cards import VISA
from tests.conftest import RunningProxy
from tests.helpers import create, partner_get, resolve
from tests.proxy.test_cards_api import card_body


async def test_the_payment_method_names_its_vault_token(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """The PaymentMethod's metadata holds vault_token: the token the client was given."""
    status, created, _ = await proxy.request(
        "POST", "/v1/cards", client="checkout", json=card_body(customer_ref="cust-meta")
    )
    assert status == 201, created
    assert created is not None
    resolved = await resolve(proxy, str(created["token"]))
    _, pm = await partner_get(localstripe, f"/v1/payment_methods/{resolved['partner_reference']}")
    assert pm["metadata"] == {"vault_token": created["token"]}
    assert VISA.number not in str(pm["metadata"])
    unused = await create(proxy, "/v1/cards", card_body())
    assert unused["token"] != created["token"]
