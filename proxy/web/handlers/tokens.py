"""Reading tokens."""

from __future__ import annotations

import msgspec
from aiohttp import web

from proxy.core import customers, tokens
from proxy.core.audit import audited_resolve
from proxy.domain.errors import JSON_CHARSET, JSON_CONTENT_TYPE
from proxy.web.appkeys import SERVICES
from proxy.web.clientaddr import client_address
from proxy.web.middleware import TOKEN_KEY, authenticate

_SCOPES = frozenset({"read", "resolve"})
_DELETE = frozenset({"delete"})
_encode = msgspec.json.Encoder().encode


async def get_token(request: web.Request) -> web.Response:
    """GET /v1/tokens/{token}: masked view for `read`, partner reference too for `resolve`."""
    client = await authenticate(request, _SCOPES)
    token = request.match_info["token"]
    if "resolve" in client.scopes:
        # Fail closed: no partner reference leaves unless its audit event is durable.
        result = await audited_resolve(
            request.app[SERVICES], token, actor=client.name, origin=client_address(request)
        )
    else:
        result = await tokens.read_token(request.app[SERVICES], token, resolve=False)
    request[TOKEN_KEY] = token
    # msgspec: a resolve's body is encoded on every call, and json.dumps costs four times more.
    return web.Response(body=_encode(result), content_type=JSON_CONTENT_TYPE, charset=JSON_CHARSET)


async def delete_token(request: web.Request) -> web.Response:
    """DELETE /v1/tokens/{token}: delete one token, detaching it at the partner first."""
    client = await authenticate(request, _DELETE)
    token = request.match_info["token"]
    result = await customers.audited_delete(
        request.app[SERVICES], token, actor=client.name, origin=client_address(request)
    )
    request[TOKEN_KEY] = token  # only once known to be a token: the path could hold anything
    return web.json_response(result)
