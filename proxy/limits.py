"""Limits on hostile input that aiohttp does not set for us, and the server's own options.

Body size is aiohttp's ``client_max_size`` (TOKENPROXY_MAX_BODY_BYTES); header line and
field sizes are its parser options (TOKENPROXY_MAX_HEADER_BYTES); these add a deadline
for reading a body (slow-loris style trickling holds a connection and a handler) and an
explicit JSON nesting depth (deep nesting costs recursion in the parser and everywhere
that walks the result; our bodies are two levels deep).
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from proxy.errors import InvalidRequest, ProxyError
from proxy.settings import Settings

_log = structlog.get_logger("tokenproxy.http")

MAX_JSON_DEPTH = 8
_OPENERS = (ord("["), ord("{"))
_CLOSERS = (ord("]"), ord("}"))
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays/objects in ``raw`` nest deeper than ``limit`` (strings ignored)."""
    # Fast path: a body with few brackets cannot nest deeply; the scan below runs in
    # Python, and tokenization bodies hold two openers.
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif byte in _CLOSERS:
            depth -= 1
    return False


def server_options(settings: Settings) -> dict[str, Any]:
    """aiohttp server options (AppRunner keyword arguments) for the API listener."""
    return {
        "max_line_size": settings.max_header_bytes,
        "max_field_size": settings.max_header_bytes,
        "max_headers": 64,
        # After an early answer (413, 408) aiohttp drains the unread body before closing,
        # 10 s by default: a trickling client would keep the connection that long.
        "lingering_time": 1.0,
        "shutdown_timeout": settings.shutdown_grace,
    }


class _QuietRequestHandler(RequestHandler):
    """Answers HTTP parse errors (oversized or malformed request line and headers) our way.

    aiohttp's own answer quotes the offending bytes ("Got more than 8190 bytes when
    reading: b'4242…'") in the body and the error log: a card number sent in a header
    would be echoed back and logged. Here the body is our JSON error and the log line
    holds only the error class.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Our JSON error for a request aiohttp could not parse; never the parser's text."""
        _log.warning("http_protocol_error", status=status, error=type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        if isinstance(exc, LineTooLong):
            error: ProxyError = InvalidRequest(
                "A request line or header is too large.", code="header_too_large"
            )
        elif 400 <= status < 500:
            error = InvalidRequest("The request could not be parsed.", code="malformed_request")
        else:
            error = ProxyError("An internal error occurred.")
        response = web.Response(
            status=error.status,
            body=json.dumps(error.body(None)).encode(),
            content_type="application/json",
        )
        response.force_close()
        return response


class _QuietServer(Server):
    def __call__(self) -> RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """The API listener's runner: aiohttp's, with parse errors answered by us."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _QuietServer  # same state, one method different
        return server
