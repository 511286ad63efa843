"""Card tokenization."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from proxy import service
from proxy.appkeys import SERVICES
from proxy.middleware import TOKEN_KEY, authenticate, read_json

_SCOPES = frozenset({"tokenize"})


async def create_card(request: web.Request) -> web.Response:
    """POST /v1/cards: tokenize a card."""
    authenticate(request, _SCOPES)
    body = await read_json(request)
    result = await service.tokenize_card(
        request.app[SERVICES], body, today=datetime.now(UTC).date()
    )
    request[TOKEN_KEY] = result["token"]
    return web.json_response(result, status=201)
