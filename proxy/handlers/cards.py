"""Card tokenization."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from proxy import idempotency, service
from proxy.appkeys import SERVICES
from proxy.middleware import (
    REQUEST_ID_KEY,
    TOKEN_KEY,
    authenticate,
    read_json,
    refuse_customer_fields_from_publishable,
)

_SCOPES = frozenset({"tokenize"})


async def create_card(request: web.Request) -> web.Response:
    """POST /v1/cards: tokenize a card (at most once per Idempotency-Key)."""
    client = authenticate(request, _SCOPES)
    key = idempotency.idempotency_key(request)
    body = await read_json(request)
    refuse_customer_fields_from_publishable(client, body)
    today = datetime.now(UTC).date()
    if key is None:
        result = await service.tokenize_card(request.app[SERVICES], body, today=today)
        request[TOKEN_KEY] = result["token"]
        return web.json_response(result, status=201)
    answer = await idempotency.tokenize_card_once(
        request.app[SERVICES],
        client=client.name,
        key=key,
        raw=await request.read(),  # cached by read_json: the bytes the key is bound to
        body=body,
        today=today,
        request_id=request[REQUEST_ID_KEY],
    )
    return answer.response()
