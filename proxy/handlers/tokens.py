"""Reading tokens."""

from __future__ import annotations

from aiohttp import web

from proxy import service
from proxy.appkeys import SERVICES
from proxy.audit import audited_resolve
from proxy.middleware import TOKEN_KEY, authenticate

_SCOPES = frozenset({"read", "resolve"})


async def get_token(request: web.Request) -> web.Response:
    """GET /v1/tokens/{token}: masked view for `read`, partner reference too for `resolve`."""
    client = authenticate(request, _SCOPES)
    token = request.match_info["token"]
    if "resolve" in client.scopes:
        # Fail closed: no partner reference leaves unless its audit event is durable.
        result = await audited_resolve(
            request.app[SERVICES], token, actor=client.name, origin=request.remote
        )
    else:
        result = await service.read_token(request.app[SERVICES], token, resolve=False)
    request[TOKEN_KEY] = token
    return web.json_response(result)
