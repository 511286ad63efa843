"""tokenproxy_client's customer, invoice and delete methods against the real proxy.

Each test fails, naming the route, while the proxy does not serve it; the drift test
checks every parameter and field the client sends against the served OpenAPI document.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from tests.cards import PARTNER_CARDS, VISA, luhn_complete
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


async def test_attach_token_makes_a_single_use_card_reusable(proxy: RunningProxy) -> None:
    """A card tokenized without a customer is single-use; attach_token saves it, reusable."""
    require_route(proxy, "POST", "/v1/tokens/{token}/attach")
    async with client_for(proxy, "checkout") as checkout:
        single = await checkout.tokenize_card(VISA.number, 12, 2034, VISA.cvc)
        saved = await checkout.attach_token(single.token, "cus-attach")
    assert (single.reusable, saved.reusable) == (False, True)
    async with client_for(proxy, "billing") as billing:
        resolved = await billing.resolve(saved.token)
        with pytest.raises(NotFoundError):
            await billing.resolve(single.token)
    assert resolved.view.customer_ref == "cus-attach"
    assert resolved.partner_customer is not None


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


async def tokenize_many(proxy: RunningProxy, customer_ref: str, count: int) -> list[str]:
    """``count`` cards for one customer, in creation order; their tokens."""
    async with client_for(proxy, "checkout") as checkout:
        return [
            (
                await checkout.tokenize_card(
                    PARTNER_CARDS[i % len(PARTNER_CARDS)].number,
                    12,
                    2034,
                    PARTNER_CARDS[i % len(PARTNER_CARDS)].cvc,
                    customer_ref=customer_ref,
                )
            ).token
            for i in range(count)
        ]


async def test_listing_follows_every_page_once(proxy: RunningProxy) -> None:
    """Across several pages, every token comes back exactly once, oldest first."""
    tokens = await tokenize_many(proxy, "cus-pages", 5)
    async with client_for(proxy, "orders") as orders:
        for page_size in (1, 2, 4, 5, 100):
            seen: list[str] = []
            async for view in orders.iter_customer_tokens("cus-pages", page_size=page_size):
                seen.append(view.token)
                # Bounded: a client that restarts from page one would loop forever.
                assert len(seen) <= len(tokens), page_size
            assert seen == tokens, page_size
        listed = await orders.list_customer_tokens("cus-pages", page_size=2)
    assert [v.token for v in listed] == tokens


async def test_page_size_outside_the_servers_bounds_is_refused_locally() -> None:
    """A page size the server would refuse raises ValueError before any request."""
    client = TokenProxyClient("http://127.0.0.1:1", "tpk_unused")
    for size in (0, 101):
        with pytest.raises(ValueError, match="page_size"):
            await anext(client.iter_customer_tokens("cus", page_size=size))
    await client.close()


@dataclass
class Sent:
    """What the client put on the wire, request by request."""

    requests: list[tuple[str, str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    _bodies: dict[int, bytes] = field(default_factory=dict)

    def trace(self) -> aiohttp.TraceConfig:
        """A trace config recording method, path, query and JSON body of each request."""
        config = aiohttp.TraceConfig()

        async def chunk(_: object, ctx: SimpleNamespace, params: Any) -> None:
            self._bodies[id(ctx)] = self._bodies.get(id(ctx), b"") + params.chunk

        async def end(_: object, ctx: SimpleNamespace, params: Any) -> None:
            raw = self._bodies.pop(id(ctx), b"")
            body = json.loads(raw) if raw else {}
            self.requests.append((params.method, params.url.path, dict(params.url.query), body))

        config.on_request_chunk_sent.append(chunk)
        config.on_request_end.append(end)
        return config


def _operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    for template, operations in spec["paths"].items():
        pattern = re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in operations:
            return dict(operations[method.lower()])
    pytest.fail(f"the server documents no {method} {path}")


def _schema(spec: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    name = ref["$ref"].rsplit("/", 1)[-1]
    return dict(spec["components"]["schemas"][name])


async def test_client_sends_only_what_the_server_takes(proxy: RunningProxy) -> None:
    """Every query parameter and body field of every client method is one the server takes.

    Each method runs against the real proxy with every optional argument set, so the
    server refuses unknown body fields; query parameters, which the server would ignore,
    are checked against the served OpenAPI document.
    """
    status, spec, _ = await proxy.request("GET", "/openapi.json")
    assert status == 200
    assert spec is not None
    sent = Sent()
    async with aiohttp.ClientSession(trace_configs=[sent.trace()]) as session:

        def client(name: str) -> TokenProxyClient:
            return TokenProxyClient(proxy.base, proxy.keys[name], retry=FAST, session=session)

        card = await client("checkout").tokenize_card(
            VISA.number,
            12,
            2034,
            VISA.cvc,
            holder_name="Ada Lovelace",
            customer_ref="cus-drift",
            metadata={"order": "A-1"},
            idempotency_key="drift-card",
        )
        bank = await client("checkout").tokenize_bank_account(
            "DE89370400440532013000",
            "Greta Garbo",
            email="greta@example.com",
            customer_ref="cus-drift",
            mandate_acceptance={
                "ip_address": "203.0.113.7",
                "user_agent": "Mozilla/5.0",
                "accepted_at": int(time.time()),
            },
            idempotency_key="drift-bank",
        )
        invoice = await client("invoicer").create_invoice(
            "cus-drift",
            "INV-2001",
            12900,
            "SEK",
            "2030-01-31",
            ocr_reference=luhn_complete("12345" + "7"),
            ocr_length_digit=True,
            partner="stripe",
            partner_reference="in_drift",
            idempotency_key="drift-invoice",
        )
        view = await client("orders").read(card.token)
        resolved = await client("billing").resolve(card.token)
        listed = await client("orders").list_customer_tokens("cus-drift", page_size=1)
        export = await client("ops").export_customer("cus-drift")
        deletion = await client("eraser").delete(card.token)
        erasure = await client("eraser").erase_customer("cus-drift")
    assert len(sent.requests) >= 10
    # Every field the typed results read is one the server fills.
    assert card.brand == "visa"
    assert card.last4 == VISA.number[-4:]
    assert card.masked
    assert card.created_at is not None
    assert bank.last4 == "3000"
    assert bank.masked
    assert bank.country == "DE"
    assert bank.created_at is not None
    assert invoice.token.startswith("vtok_inv_")
    assert invoice.created_at is not None
    assert (view.brand, view.last4, view.masked) == (card.brand, card.last4, card.masked)
    assert view.customer_ref == "cus-drift"
    assert view.metadata == {"order": "A-1"}
    assert view.created_at == card.created_at
    assert resolved.partner == "stripe"
    assert resolved.partner_reference
    assert {v.token for v in listed} >= {card.token, bank.token}
    assert export.customer_ref == "cus-drift"
    assert deletion.deleted
    assert deletion.token == card.token
    assert erasure.complete
    for method, path, query, body in sent.requests:
        operation = _operation(spec, method, path)
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        assert set(query) <= declared, (method, path, set(query) - declared)
        if body:
            content = operation["requestBody"]["content"]["application/json"]["schema"]
            fields = set(_schema(spec, content)["properties"])
            assert set(body) <= fields, (method, path, set(body) - fields)
