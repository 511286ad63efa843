"""Card tokenization."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from proxy.core import create
from proxy.domain.errors import PermissionDenied
from proxy.web import render
from proxy.web.appkeys import SERVICES
from proxy.web.middleware import (
    TOKEN_KEY,
    authenticate,
    read_json,
    refuse_customer_fields_from_publishable,
)

_SCOPES = frozenset({"tokenize"})


async def create_card(request: web.Request) -> web.Response:
    """POST /v1/cards: tokenize a card (at most once per Idempotency-Key)."""
    client = await authenticate(request, _SCOPES)
    key = render.idempotency_key(request)
    body = await read_json(request)
    refuse_customer_fields_from_publishable(client, body)
    call = await render.creation_call(request, client.name, key)
    today = datetime.now(UTC).date()
    answer = await create.card(request.app[SERVICES], body, call, today=today)
    return render.answer_response(request, answer)


async def confirm_card(request: web.Request) -> web.Response:
    """POST /v1/cards/confirm: the token of a card whose holder completed authentication."""
    client = await authenticate(request, _SCOPES)
    key = render.idempotency_key(request)
    body = await read_json(request)
    call = await render.creation_call(request, client.name, key)
    answer = await create.confirmed_card(request.app[SERVICES], body, call)
    return render.answer_response(request, answer)


async def attach_token(request: web.Request) -> web.Response:
    """POST /v1/tokens/{token}/attach: save a single-use card token on a customer."""
    client = await authenticate(request, _SCOPES)
    # The customer is chosen by a server: a shopper's page must not pick one.
    if client.publishable:
        raise PermissionDenied(
            "A publishable key cannot save a card on a customer; do that from a server.",
            code="publishable_key_restricted",
        )
    key = render.idempotency_key(request)
    body = await read_json(request)
    call = await render.creation_call(request, client.name, key)
    token = request.match_info["token"]
    answer = await create.attached_card(request.app[SERVICES], token, body, call)
    request[TOKEN_KEY] = token
    return render.answer_response(request, answer)
