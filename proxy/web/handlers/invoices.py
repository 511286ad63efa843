"""Invoice references."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.core import idempotent as idempotency
from proxy.core.invoices import create_invoice as create_invoice_record
from proxy.core.invoices import parse_invoice_request, store_invoice
from proxy.core.views import created_view
from proxy.web import render
from proxy.web.appkeys import SERVICES
from proxy.web.middleware import REQUEST_ID_KEY, TOKEN_KEY, authenticate, read_json
from vault import Kind, Record

_SCOPES = frozenset({"invoice"})


async def create_invoice(request: web.Request) -> web.Response:
    """POST /v1/invoices: store an invoice reference under a vtok_inv_ token."""
    client = authenticate(request, _SCOPES)
    key = render.idempotency_key(request)
    body = await read_json(request)
    services = request.app[SERVICES]
    if key is None:
        result = await create_invoice_record(services, body)
        request[TOKEN_KEY] = result["token"]
        return web.json_response(result, status=201)
    invoice = parse_invoice_request(body, partners=frozenset({services.partner.name}))

    async def store_step(_: dict[str, Any], token: str) -> Record:
        return await store_invoice(services, invoice, token=token)

    answer = await idempotency.create_once(
        services,
        client=client.name,
        key=key,
        raw=await request.read(),
        request_id=request[REQUEST_ID_KEY],
        customer_ref=invoice.customer_ref,
        kind=Kind.INVOICE,
        partner_step=None,
        store_step=store_step,
        respond=created_view,
    )
    return render.answer_response(answer)
