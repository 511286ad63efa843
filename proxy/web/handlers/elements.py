"""Hosted card fields: the iframe page, its script and style, and tokenproxy.js.

The page is the only HTML the proxy serves. Its Content-Security-Policy allows
nothing but this origin's own script, style and fetches (no inline script, no eval),
and ``frame-ancestors`` names exactly the allowlisted checkout origins, so no other
site can frame it to phish for card numbers.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Final

from aiohttp import web

from proxy.domain.card import brand_rules
from proxy.web.appkeys import SETTINGS


def _asset(name: str) -> bytes:
    return (resources.files("proxy.web") / "static" / name).read_bytes()


# Read once at import: a few KiB, served from memory, never from a path a request names.
_CARD_HTML: Final = _asset("card.html").decode("utf-8")
_ASSETS: Final[dict[str, tuple[bytes, str, str]]] = {
    # name: (body, content type, Cross-Origin-Resource-Policy)
    "card.js": (_asset("card.js"), "text/javascript", "same-origin"),
    "card.css": (_asset("card.css"), "text/css", "same-origin"),
    # Loaded by checkout pages on other origins with <script src>.
    "tokenproxy.js": (_asset("tokenproxy.js"), "text/javascript", "cross-origin"),
}


def content_security_policy(frame_ancestors: tuple[str, ...]) -> str:
    """The card page's CSP: own script, style and fetches only; framed only by these origins."""
    ancestors = " ".join(frame_ancestors) if frame_ancestors else "'none'"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}"
    )


def render_card_page(allowed_origins: tuple[str, ...]) -> str:
    """The card page with its configuration (origins, brand rules) in a data attribute."""
    config = json.dumps({"origins": list(allowed_origins), "rules": brand_rules()})
    return _CARD_HTML.replace("{{CONFIG}}", html.escape(config, quote=True))


async def card_page(request: web.Request) -> web.Response:
    """GET /elements/card: the card fields page, meant for an iframe."""
    origins = request.app[SETTINGS].cors_origins
    return web.Response(
        text=render_card_page(origins),
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": content_security_policy(origins),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "Cross-Origin-Resource-Policy": "same-origin",
        },
    )


async def asset(request: web.Request) -> web.Response:
    """GET /elements/{card.js,card.css,tokenproxy.js}."""
    name = request.match_info["asset"]
    body, content_type, corp = _ASSETS[name]
    return web.Response(
        body=body,
        content_type=content_type,
        charset="utf-8",
        headers={
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "public, max-age=300",
            "Cross-Origin-Resource-Policy": corp,
        },
    )
