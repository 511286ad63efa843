"""The whole route table in one place (the OpenAPI document is checked against it)."""

from __future__ import annotations

from aiohttp import web

from proxy import openapi
from proxy.handlers import cards, elements, tokens

ROUTES: list[web.RouteDef] = [
    web.post("/v1/cards", cards.create_card, name="create_card"),
    web.get("/v1/tokens/{token}", tokens.get_token, name="get_token", allow_head=False),
    web.get("/openapi.json", openapi.serve, name="openapi", allow_head=False),
    web.get("/elements/card", elements.card_page, name="elements_card", allow_head=False),
    web.get(
        r"/elements/{asset:card\.js|card\.css|tokenproxy\.js}",
        elements.asset,
        name="elements_asset",
        allow_head=False,
    ),
]
