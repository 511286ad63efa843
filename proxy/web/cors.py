"""CORS for the routes a checkout page calls from the shopper's browser, and no others.

Only the paths in ``CORS_PATHS`` answer preflights and carry ``Access-Control-*``
headers, and only for origins in ``TOKENPROXY_CORS_ORIGINS`` (exact matches, no
wildcard). Every other route stays invisible to cross-origin scripts: a browser page
can never read a token view, a customer export or an error from them. Cookies are never
involved (keys travel in ``Authorization``), so ``Allow-Credentials`` is never sent.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from proxy.domain.errors import PermissionDenied
from proxy.web.appkeys import SETTINGS

# The tokenize routes: the only ones a browser may call. A path listed here that the
# route table does not have (yet) is simply skipped.
CORS_PATHS: Final = frozenset({"/v1/cards", "/v1/bank-accounts"})
ALLOWED_HEADERS: Final = ("Authorization", "Content-Type", "Idempotency-Key")
# Idempotent-Replayed tells a checkout page its retry got the stored answer.
EXPOSED_HEADERS: Final = ("X-Request-Id", "Retry-After", "Idempotent-Replayed")
MAX_AGE_SECONDS: Final = 600
_VARY_PREFLIGHT: Final = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def install(app: web.Application) -> None:
    """Add preflight handlers to the CORS paths in ``app``'s route table and the header hook."""
    for resource in list(app.router.resources()):
        if resource.canonical in CORS_PATHS and isinstance(resource, web.Resource):
            resource.add_route("OPTIONS", preflight)
    app.on_response_prepare.append(_add_headers)


def _methods(request: web.Request) -> set[str]:
    resource = request.match_info.route.resource
    if resource is None:
        return set()
    return {route.method for route in resource} - {"OPTIONS", "HEAD", "*"}


async def preflight(request: web.Request) -> web.Response:
    """OPTIONS on a CORS path: allow an allowlisted origin, refuse anything else with 403."""
    methods = _methods(request)
    origin = request.headers.get("Origin")
    wanted_method = request.headers.get("Access-Control-Request-Method")
    if origin is None or wanted_method is None:
        # Not a preflight, just a plain OPTIONS: say what the route takes.
        return web.Response(status=204, headers={"Allow": ", ".join(sorted(methods | {"OPTIONS"}))})
    if origin not in request.app[SETTINGS].cors_origins:
        raise PermissionDenied(
            "This origin may not call the API from a browser.", code="origin_not_allowed"
        )
    if wanted_method not in methods:
        raise PermissionDenied(
            "This method may not be used from a browser.", code="cors_method_not_allowed"
        )
    allowed = {h.lower() for h in ALLOWED_HEADERS}
    wanted = request.headers.get("Access-Control-Request-Headers", "")
    if any(h.strip().lower() not in allowed for h in wanted.split(",") if h.strip()):
        raise PermissionDenied(
            "A requested header may not be sent from a browser.", code="cors_header_not_allowed"
        )
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(sorted(methods)),
            "Access-Control-Allow-Headers": ", ".join(ALLOWED_HEADERS),
            "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
            "Vary": _VARY_PREFLIGHT,
        },
    )


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    resource = request.match_info.route.resource
    if resource is None or resource.canonical not in CORS_PATHS:
        return
    # The answer depends on Origin even when it carries no CORS header, so caches
    # between us and the browser must key on it.
    vary = response.headers.get("Vary")
    if vary is None:
        response.headers["Vary"] = "Origin"
    elif "origin" not in {v.strip().lower() for v in vary.split(",")}:
        response.headers["Vary"] = f"{vary}, Origin"
    if request.method == "OPTIONS":
        return
    origin = request.headers.get("Origin")
    if origin is not None and origin in request.app[SETTINGS].cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
