"""The bare baselines: aiohttp handlers with no vault, auth, logging or metrics.

``python -m bench.bare forward PORT PARTNER_URL``: JSON in, one partner call through a
shared aiohttp session (form-encoded, as Stripe takes it), JSON out.
``python -m bench.bare read PORT DB_PATH``: one SQLite primary-key read per request.
"""

from __future__ import annotations

import secrets
import sqlite3
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

_COLUMNS = (
    "token, kind, dek_id, ciphertext, customer_idx, fingerprint_idx, created_at, last_used_at"
)


def forwarder(partner: str) -> web.Application:
    """JSON-in, partner call, JSON-out."""
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
            app[session_key] = session
            yield

    async def create_card(request: web.Request) -> web.Response:
        body = await request.json()
        form = {
            "type": "card",
            "card[number]": body["number"],
            "card[exp_month]": str(body["exp_month"]),
            "card[exp_year]": str(body["exp_year"]),
            "card[cvc]": body["cvc"],
        }
        async with request.app[session_key].post(
            partner + "/v1/payment_methods", data=form
        ) as resp:
            created = await resp.json()
        card = created["card"]
        return web.json_response(
            {
                "token": "vtok_card_" + secrets.token_urlsafe(24),
                "kind": "card",
                "brand": card["brand"],
                "last4": card["last4"],
            },
            status=201,
        )

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/cards", create_card)
    return app


def reader(db_path: str) -> web.Application:
    """One primary-key read on the vault's own table, inline on the event loop."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)
    sql = f"SELECT {_COLUMNS} FROM records WHERE token = ?"  # noqa: S608 - constant columns

    async def get_token(request: web.Request) -> web.Response:
        row = conn.execute(sql, (request.match_info["token"],)).fetchone()
        if row is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response({"token": row[0], "kind": row[1], "created_at": row[6]})

    app = web.Application()
    app.router.add_get("/v1/tokens/{token}", get_token)
    return app


if __name__ == "__main__":
    mode, port, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    app = forwarder(arg) if mode == "forward" else reader(arg)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
