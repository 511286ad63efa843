"""Invoice references."""

from __future__ import annotations

from aiohttp import web

from proxy.appkeys import SERVICES
from proxy.invoices import create_invoice as store_invoice
from proxy.middleware import TOKEN_KEY, authenticate, read_json

_SCOPES = frozenset({"invoice"})


async def create_invoice(request: web.Request) -> web.Response:
    """POST /v1/invoices: store an invoice reference under a vtok_inv_ token."""
    authenticate(request, _SCOPES)
    body = await read_json(request)
    result = await store_invoice(request.app[SERVICES], body)
    request[TOKEN_KEY] = result["token"]
    return web.json_response(result, status=201)
