"""Bank accounts (SEPA debit)."""

from __future__ import annotations

from aiohttp import web

from proxy.core import create
from proxy.web import render
from proxy.web.appkeys import SERVICES
from proxy.web.middleware import authenticate, read_json, refuse_customer_fields_from_publishable

_SCOPES = frozenset({"tokenize"})


async def create_bank_account(request: web.Request) -> web.Response:
    """POST /v1/bank-accounts: tokenize an IBAN as a SEPA debit payment method."""
    client = await authenticate(request, _SCOPES)
    key = render.idempotency_key(request)
    body = await read_json(request)
    refuse_customer_fields_from_publishable(client, body)
    call = await render.creation_call(request, client.name, key)
    answer = await create.bank_account(request.app[SERVICES], body, call)
    return render.answer_response(request, answer)
