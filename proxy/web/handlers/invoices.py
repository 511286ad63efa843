"""Invoice references."""

from __future__ import annotations

from aiohttp import web

from proxy.core import create
from proxy.web import render
from proxy.web.appkeys import SERVICES
from proxy.web.middleware import authenticate, read_json

_SCOPES = frozenset({"invoice"})


async def create_invoice(request: web.Request) -> web.Response:
    """POST /v1/invoices: store an invoice reference under a vtok_inv_ token."""
    client = await authenticate(request, _SCOPES)
    key = render.idempotency_key(request)
    body = await read_json(request)
    call = await render.creation_call(request, client.name, key)
    answer = await create.invoice(request.app[SERVICES], body, call)
    return render.answer_response(request, answer)
