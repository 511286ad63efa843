"""tokenproxy_client's customer, invoice and delete methods against the real proxy.

Each test skips, naming the route, when the proxy does not serve it.
"""

from __future__ import annotations

import pytest

from tests.cards import PARTNER_CARDS
from tests.conftest import RunningProxy
from tokenproxy_client import NotFoundError, RetryPolicy, TokenProxyClient

FAST = RetryPolicy(max_retries=1, backoff=0.001)


def require_route(proxy: RunningProxy, method: str, template: str) -> None:
    """Fail unless the proxy's route table has ``method template`` (the client calls it)."""
    for resource in proxy.app.router.resources():
        if resource.canonical == template and any(r.method == method for r in resource):
            return
    pytest.fail(f"the proxy has no {method} {template} route, which the client calls")


def client_for(proxy: RunningProxy, name: str) -> TokenProxyClient:
    """A client holding the named test client's key."""
    return TokenProxyClient(proxy.base, proxy.keys[name], retry=FAST)


async def tokenize_two(proxy: RunningProxy, customer_ref: str) -> set[str]:
    """Two cards for one customer; their tokens."""
    async with client_for(proxy, "checkout") as checkout:
        return {
            (
                await checkout.tokenize_card(c.number, 12, 2034, c.cvc, customer_ref=customer_ref)
            ).token
            for c in PARTNER_CARDS[:2]
        }


async def test_list_customer_tokens(proxy: RunningProxy) -> None:
    """Every token of a customer comes back as masked views, and only that customer's."""
    require_route(proxy, "GET", "/v1/customers/{customer_ref}/tokens")
    tokens = await tokenize_two(proxy, "cus-list")
    await tokenize_two(proxy, "cus-other")
    async with client_for(proxy, "orders") as orders:
        views = await orders.list_customer_tokens("cus-list")
    assert {v.token for v in views} == tokens
    assert all("partner_reference" not in v.raw for v in views)


async def test_delete_token(proxy: RunningProxy) -> None:
    """A deleted token reads as not found afterwards."""
    require_route(proxy, "DELETE", "/v1/tokens/{token}")
    token = next(iter(await tokenize_two(proxy, "cus-del")))
    async with client_for(proxy, "eraser") as eraser:
        deletion = await eraser.delete(token)
    assert deletion.token == token
    assert deletion.deleted
    async with client_for(proxy, "billing") as billing:
        with pytest.raises(NotFoundError):
            await billing.resolve(token)


async def test_export_then_erase_customer(proxy: RunningProxy) -> None:
    """The export lists the customer's tokens; erasure removes them and can be repeated."""
    require_route(proxy, "GET", "/v1/customers/{customer_ref}/export")
    require_route(proxy, "DELETE", "/v1/customers/{customer_ref}")
    tokens = await tokenize_two(proxy, "cus-erase")
    async with client_for(proxy, "ops") as ops:
        export = await ops.export_customer("cus-erase")
    assert all(t in str(export.raw) for t in tokens)
    async with client_for(proxy, "eraser") as eraser:
        erasure = await eraser.erase_customer("cus-erase")
        assert erasure.complete
        again = await eraser.erase_customer("cus-erase")
        assert again.complete
    async with client_for(proxy, "billing") as billing:
        for token in tokens:
            with pytest.raises(NotFoundError):
                await billing.resolve(token)


async def test_create_invoice(proxy: RunningProxy) -> None:
    """An invoice reference is stored under a vtok_inv_ token."""
    require_route(proxy, "POST", "/v1/invoices")
    # POST /v1/invoices takes the dedicated invoice scope (docs/api.md), not tokenize.
    async with client_for(proxy, "invoicer") as client:
        invoice = await client.create_invoice("cus-inv", "INV-1001", 12900, "SEK", "2030-01-31")
    assert invoice.token.startswith("vtok_inv_")
