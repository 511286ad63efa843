"""Card tokenization."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from proxy.core import cards
from proxy.core import idempotent as idempotency
from proxy.core.card_setup import confirm_card_setup, parse_confirm_request
from proxy.core.customers import open_pending
from proxy.core.views import created_view
from proxy.web import render
from proxy.web.appkeys import SERVICES
from proxy.web.middleware import (
    REQUEST_ID_KEY,
    TOKEN_KEY,
    authenticate,
    read_json,
    refuse_customer_fields_from_publishable,
)
from vault import Kind, Record

_SCOPES = frozenset({"tokenize"})


async def create_card(request: web.Request) -> web.Response:
    """POST /v1/cards: tokenize a card (at most once per Idempotency-Key)."""
    client = authenticate(request, _SCOPES)
    key = render.idempotency_key(request)
    body = await read_json(request)
    refuse_customer_fields_from_publishable(client, body)
    today = datetime.now(UTC).date()
    if key is None:
        result = await cards.tokenize_card(
            request.app[SERVICES], body, today=today, actor=client.name
        )
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
    return render.answer_response(answer)


async def confirm_card(request: web.Request) -> web.Response:
    """POST /v1/cards/confirm: the token of a card whose holder completed authentication."""
    client = authenticate(request, _SCOPES)
    key = render.idempotency_key(request)
    sealed = parse_confirm_request(await read_json(request))
    services = request.app[SERVICES]
    if key is None:
        record = await confirm_card_setup(services, sealed, client=client.name)
        request[TOKEN_KEY] = record.token
        return web.json_response(created_view(record), status=201)

    async def store_step(_result: dict[str, Any], token: str) -> Record:
        return await confirm_card_setup(services, sealed, client=client.name, token=token)

    # Opening the setup first refuses a foreign or expired one before the key is recorded,
    # and names the customer whose erasure must take this key with it.
    customer_ref = open_pending(services, sealed, client.name).new.customer_ref

    answer = await idempotency.create_once(
        services,
        client=client.name,
        key=key,
        raw=await request.read(),  # cached by read_json: the bytes the key is bound to
        request_id=request[REQUEST_ID_KEY],
        customer_ref=customer_ref,
        kind=Kind.CARD,
        partner_step=None,
        store_step=store_step,
        respond=created_view,
    )
    return render.answer_response(answer)
