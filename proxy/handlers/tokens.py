"""Reading tokens."""

from __future__ import annotations

from aiohttp import web

from proxy import customers, service
from proxy.appkeys import SERVICES
from proxy.middleware import TOKEN_KEY, authenticate

_SCOPES = frozenset({"read", "resolve"})


async def get_token(request: web.Request) -> web.Response:
    """GET /v1/tokens/{token}: masked view for `read`, partner reference too for `resolve`."""
    client = authenticate(request, _SCOPES)
    token = request.match_info["token"]
    result = await service.read_token(
        request.app[SERVICES], token, resolve="resolve" in client.scopes
    )
    request[TOKEN_KEY] = token
    return web.json_response(result)


async def delete_token(request: web.Request) -> web.Response:
    """DELETE /v1/tokens/{token}: delete one token, detaching it at the partner first."""
    authenticate(request, frozenset({"delete"}))
    token = request.match_info["token"]
    result = await customers.delete_token(request.app[SERVICES], token)
    request[TOKEN_KEY] = token  # only once known to be a token: the path could hold anything
    return web.json_response(result)
