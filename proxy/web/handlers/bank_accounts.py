"""Bank accounts (SEPA debit)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.core import idempotent as idempotency
from proxy.core.bank_accounts import (
    create_sepa_at_partner,
    store_bank_account,
    tokenize_bank_account,
)
from proxy.core.views import created_view
from proxy.domain.bank import parse_bank_account_request
from proxy.web import render
from proxy.web.appkeys import SERVICES
from proxy.web.middleware import (
    REQUEST_ID_KEY,
    TOKEN_KEY,
    authenticate,
    read_json,
    refuse_customer_fields_from_publishable,
)
from vault import Kind, Record

_SCOPES = frozenset({"tokenize"})


async def create_bank_account(request: web.Request) -> web.Response:
    """POST /v1/bank-accounts: tokenize an IBAN as a SEPA debit payment method."""
    client = authenticate(request, _SCOPES)
    key = render.idempotency_key(request)
    body = await read_json(request)
    refuse_customer_fields_from_publishable(client, body)
    services = request.app[SERVICES]
    if key is None:
        result = await tokenize_bank_account(
            services, body, actor=client.name, origin=request.remote
        )
        request[TOKEN_KEY] = result["token"]
        return web.json_response(result, status=201)
    # Validated before the key is recorded: a fixed body may reuse the key.
    account = parse_bank_account_request(body)

    async def partner_step(partner_key: str) -> dict[str, Any]:
        return await create_sepa_at_partner(services, account, partner_key)

    async def store_step(created: dict[str, Any], token: str) -> Record:
        return await store_bank_account(
            services, account, created, token=token, actor=client.name, origin=request.remote
        )

    answer = await idempotency.create_once(
        services,
        client=client.name,
        key=key,
        raw=await request.read(),  # cached by read_json: the bytes the key is bound to
        request_id=request[REQUEST_ID_KEY],
        customer_ref=account.customer_ref,
        kind=Kind.BANK,
        partner_step=partner_step,
        store_step=store_step,
        respond=created_view,
    )
    return render.answer_response(answer)
