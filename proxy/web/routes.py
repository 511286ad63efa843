"""The whole route table in one place (the OpenAPI document is checked against it)."""

from __future__ import annotations

from aiohttp import web

from proxy.web import openapi
from proxy.web.handlers import bank_accounts, cards, customers, elements, invoices, tokens

ROUTES: list[web.RouteDef] = [
    web.post("/v1/cards", cards.create_card, name="create_card"),
    web.post("/v1/cards/confirm", cards.confirm_card, name="confirm_card"),
    web.get("/v1/tokens/{token}", tokens.get_token, name="get_token", allow_head=False),
    web.delete("/v1/tokens/{token}", tokens.delete_token, name="delete_token"),
    web.post("/v1/bank-accounts", bank_accounts.create_bank_account, name="create_bank_account"),
    web.post("/v1/invoices", invoices.create_invoice, name="create_invoice"),
    web.get(
        "/v1/customers/{customer_ref}/tokens",
        customers.list_tokens,
        name="list_customer_tokens",
        allow_head=False,
    ),
    web.get(
        "/v1/customers/{customer_ref}/export",
        customers.export_customer,
        name="export_customer",
        allow_head=False,
    ),
    web.delete("/v1/customers/{customer_ref}", customers.erase_customer, name="erase_customer"),
    web.get("/openapi.json", openapi.serve, name="openapi", allow_head=False),
    web.get("/elements/card", elements.card_page, name="elements_card", allow_head=False),
    web.get(
        r"/elements/{asset:card\.js|card\.css|tokenproxy\.js}",
        elements.asset,
        name="elements_asset",
        allow_head=False,
    ),
]
