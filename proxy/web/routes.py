"""The route table, made from the API's declared operations (proxy.web.api), one handler each."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from proxy.web import api, openapi
from proxy.web.handlers import (
    bank_accounts,
    cards,
    customers,
    elements,
    invoices,
    partner_events,
    tokens,
)
from proxy.web.middleware import Handler

# By route name: every routed operation has exactly one (a KeyError at import otherwise).
HANDLERS: Final[dict[str, Handler]] = {
    "create_card": cards.create_card,
    "confirm_card": cards.confirm_card,
    "get_token": tokens.get_token,
    "delete_token": tokens.delete_token,
    "attach_token": cards.attach_token,
    "create_bank_account": bank_accounts.create_bank_account,
    "create_invoice": invoices.create_invoice,
    "list_customer_tokens": customers.list_tokens,
    "export_customer": customers.export_customer,
    "erase_customer": customers.erase_customer,
    "preview_erasure": customers.preview_erasure,
    "openapi": openapi.serve,
    "elements_card": elements.card_page,
    "elements_asset": elements.asset,
    "stripe_events": partner_events.stripe_events,
}

# GET routes answer no HEAD (web.route adds none): nothing here is worth a HEAD.
ROUTES: list[web.RouteDef] = [
    web.route(op.method.upper(), op.path, HANDLERS[op.name], name=op.name) for op in api.routed()
]
