"""Customers: token listing, access report, erasure."""

from __future__ import annotations

from aiohttp import web

from proxy.core import customers
from proxy.web.appkeys import SERVICES
from proxy.web.clientaddr import client_address
from proxy.web.middleware import authenticate

_READ = frozenset({"read"})
_ADMIN = frozenset({"admin"})
_DELETE = frozenset({"delete"})


async def list_tokens(request: web.Request) -> web.Response:
    """GET /v1/customers/{customer_ref}/tokens: masked views, paginated."""
    await authenticate(request, _READ)
    result = await customers.list_tokens(
        request.app[SERVICES],
        request.match_info["customer_ref"],
        limit=request.query.get("limit"),
        starting_after=request.query.get("starting_after"),
    )
    return web.json_response(result)


async def export_customer(request: web.Request) -> web.Response:
    """GET /v1/customers/{customer_ref}/export: the data-subject access report."""
    await authenticate(request, _ADMIN)
    result = await customers.export_customer(
        request.app[SERVICES], request.match_info["customer_ref"]
    )
    return web.json_response(result)


async def preview_erasure(request: web.Request) -> web.Response:
    """GET /v1/customers/{customer_ref}/erasure-preview: what an erasure would remove."""
    await authenticate(request, _DELETE)
    result = await customers.preview_erasure(
        request.app[SERVICES], request.match_info["customer_ref"]
    )
    return web.json_response(result)


async def erase_customer(request: web.Request) -> web.Response:
    """DELETE /v1/customers/{customer_ref}: erasure (detach, delete, crypto-shred)."""
    client = await authenticate(request, _DELETE)
    result = await customers.audited_erase(
        request.app[SERVICES],
        request.match_info["customer_ref"],
        actor=client.name,
        origin=client_address(request),
    )
    return web.json_response(result)
