"""Bank account (SEPA debit) tokenization."""

from __future__ import annotations

from aiohttp import web

from proxy.accounts import tokenize_bank_account
from proxy.appkeys import SERVICES
from proxy.middleware import (
    TOKEN_KEY,
    authenticate,
    read_json,
    refuse_customer_fields_from_publishable,
)

_SCOPES = frozenset({"tokenize"})


async def create_bank_account(request: web.Request) -> web.Response:
    """POST /v1/bank-accounts: tokenize an IBAN as a SEPA debit payment method."""
    client = authenticate(request, _SCOPES)
    body = await read_json(request)
    refuse_customer_fields_from_publishable(client, body)
    result = await tokenize_bank_account(request.app[SERVICES], body)
    request[TOKEN_KEY] = result["token"]
    return web.json_response(result, status=201)
