"""An AppRunner whose low-level HTTP errors never echo the request.

When aiohttp's parser rejects a request (bad method, bad request line, oversized
headers) it answers before any middleware runs, with a text body that quotes the
offending bytes. A card number sent where the method belongs would come straight
back. This runner swaps in a request handler that answers those errors with our
fixed JSON error shape instead.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

_TITLES = {400: "The request could not be parsed.", 413: "The request is too large."}


def _body(status: int) -> str:
    return json.dumps(
        {
            "error": {
                "type": "invalid_request_error" if status < 500 else "api_error",
                "code": "malformed_request" if status < 500 else "internal_error",
                "message": _TITLES.get(status, "The request could not be processed."),
                "param": None,
                "request_id": None,
            }
        }
    )


class _SafeRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # Let aiohttp log (through our redacting handler) and check the connection state,
        # but never send its message: it quotes the raw request.
        super().handle_error(request, status, exc, None)
        response = web.Response(status=status, text=_body(status), content_type="application/json")
        response.force_close()
        return response


class _SafeServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _SafeRequestHandler(self, loop=self._loop, **self._kwargs)


class SafeAppRunner(web.AppRunner):
    """``web.AppRunner`` whose parser-level error responses are ours and echo nothing."""

    async def _make_server(self) -> web.Server:
        server: Any = await super()._make_server()
        # aiohttp offers no hook for the handler class; Server has no __slots__, so
        # re-classing the instance it built is the least intrusive way in.
        server.__class__ = _SafeServer
        return server  # type: ignore[no-any-return]
