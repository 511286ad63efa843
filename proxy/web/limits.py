"""Limits on hostile input that aiohttp does not set for us, and the server's own options.

Body size is aiohttp's ``client_max_size`` (TOKENPROXY_MAX_BODY_BYTES); header line and
field sizes are its parser options (TOKENPROXY_MAX_HEADER_BYTES); these add a deadline
for reading a body (slow-loris style trickling holds a connection and a handler) and an
explicit JSON nesting depth (deep nesting costs recursion in the parser and everywhere
that walks the result; our bodies are two levels deep).

aiohttp has no deadline for the request line and headers either, and no cap on open
connections: a client sending a header line every few seconds holds its connection (and
its file descriptor) for as long as it likes, and thousands of them exhaust the process.
``ApiRunner`` adds both at the protocol level (see ``_GuardedRequestHandler``). That
leans on ``aiohttp.web_protocol.RequestHandler`` internals (``_handle_request``,
``_request_count``, ``_request_in_progress``, ``_messages``) as of aiohttp 3.14; the
tests drive real sockets, so an aiohttp upgrade that changes them fails there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from proxy.domain.errors import ExpectationFailed, InvalidRequest, ProxyError
from proxy.infra.settings import Settings

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


# The ops listener's clients are a metrics scraper and health probes.
OPS_MAX_CONNECTIONS = 64


@dataclass(slots=True)
class ConnectionLimits:
    """A listener's connection limits, and what it tells when it closes a connection."""

    header_timeout: float = 10.0
    max_connections: int = 1024
    # Called with the reason of each close: "header_timeout", "connection_limit", or
    # "malformed_request" (a request line or headers aiohttp could not parse).
    on_close: Callable[[str], None] = field(default=lambda reason: None)
    open: int = 0
    # Which API listener the connections arrive on ("public" or "internal"): the routes a
    # connection may reach depend on it (proxy.web.listeners).
    listener: str = "public"


def server_options(
    settings: Settings, on_close: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """aiohttp server options (ApiRunner keyword arguments) for the API listener."""
    return {
        "limits": _limits(settings, settings.max_connections, on_close),
        "max_line_size": settings.max_header_bytes,
        "max_field_size": settings.max_header_bytes,
        "max_headers": 64,
        # After an early answer (413, 408) aiohttp drains the unread body before closing,
        # 10 s by default: a trickling client would keep the connection that long.
        "lingering_time": 1.0,
        "shutdown_timeout": settings.shutdown_grace,
    }


def ops_server_options(
    settings: Settings, on_close: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """ApiRunner keyword arguments for the ops listener (its own, smaller connection cap)."""
    return {"limits": _limits(settings, OPS_MAX_CONNECTIONS, on_close)}


def _limits(
    settings: Settings, max_connections: int, on_close: Callable[[str], None] | None
) -> ConnectionLimits:
    limits = ConnectionLimits(settings.header_timeout, max_connections)
    if on_close is not None:
        limits.on_close = on_close
    return limits


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
        response = _json_error(error)
        response.force_close()
        return response

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        async def answered_our_way(request: BaseRequest) -> web.StreamResponse:
            try:
                return await request_handler(request)
            except web.HTTPException as exc:
                # Only what aiohttp raises before the middleware reaches here: its Expect
                # handler's 417 quotes the header ("Unknown Expect: 4242…").
                return _json_error(_outside_middleware(exc))

        return await super()._handle_request(request, start_time, answered_our_way)


def _outside_middleware(exc: web.HTTPException) -> ProxyError:
    if exc.status == ExpectationFailed.status:
        return ExpectationFailed("Only Expect: 100-continue is supported.")
    if 400 <= exc.status < 500:
        return InvalidRequest("The request could not be processed.")
    return ProxyError("An internal error occurred.")


def _json_error(error: ProxyError) -> web.Response:
    return web.Response(
        status=error.status,
        body=json.dumps(error.body(None)).encode(),
        content_type="application/json",
    )


class _GuardedRequestHandler(_QuietRequestHandler):
    """Closes connections over the listener's cap, and those slow to send a request head.

    The header clock starts when the connection opens and again when a response is done
    (a keep-alive connection waiting for its next request), and stops when a complete
    request line and headers are parsed. So a connection can be idle, or trickle its
    headers, for at most ``header_timeout``; a request being handled (its body has its
    own deadline) is never cut by it. Over ``max_connections`` a new connection is closed
    at once, before anything is read: answering it would need the resources the cap keeps.
    """

    __slots__ = ("_counted", "_header_timer", "_limits")

    def __init__(self, manager: Server, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._counted = False
        self._header_timer: asyncio.TimerHandle | None = None

    @property
    def listener(self) -> str:
        """The listener this connection arrived on."""
        return self._limits.listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the connection if the listener is under its cap, and start the header clock."""
        limits = self._limits
        if limits.open >= limits.max_connections:
            limits.on_close("connection_limit")
            transport.close()
            return
        limits.open += 1
        self._counted = True
        super().connection_made(transport)
        self._start_header_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Give the connection's place back."""
        if not self._counted:
            return  # refused in connection_made: aiohttp never saw it
        self._counted = False
        self._limits.open -= 1
        self._stop_header_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse as aiohttp does; a complete request head stops the header clock."""
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._stop_header_clock()

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._start_header_clock()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Our JSON error (see the base class); an unparsable request is counted, then closed."""
        if 400 <= status < 500:
            self._limits.on_close("malformed_request")
        return super().handle_error(request, status, exc, message)

    def _start_header_clock(self) -> None:
        self._stop_header_clock()
        if self.transport is None:
            return  # closed while the last request was handled: nothing left to time
        self._header_timer = self._loop.call_later(
            self._limits.header_timeout, self._header_deadline
        )

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self._request_in_progress or self._messages or self.transport is None:
            return  # a request is being handled; its end starts the clock again
        self._limits.on_close("header_timeout")
        self.force_close()


class _QuietServer(Server):
    limits: ConnectionLimits

    def __call__(self) -> RequestHandler:
        return _GuardedRequestHandler(self, loop=self._loop, limits=self.limits, **self._kwargs)

    def factory(self, limits: ConnectionLimits) -> Callable[[], RequestHandler]:
        """A protocol factory for another listener of the same app, with its own ``limits``."""
        return lambda: _GuardedRequestHandler(self, loop=self._loop, limits=limits, **self._kwargs)


class ApiRunner(web.AppRunner):
    """A listener's runner: aiohttp's, with parse errors answered by us and connection limits."""

    def __init__(
        self, app: web.Application, *, limits: ConnectionLimits | None = None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits or ConnectionLimits()

    @property
    def limits(self) -> ConnectionLimits:
        """The limits of this runner's own listener."""
        return self._limits

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _QuietServer  # same state, one method different
        server.limits = self._limits  # type: ignore[attr-defined]
        return server

    def protocol_factory(self, limits: ConnectionLimits) -> Callable[[], RequestHandler]:
        """Connections of another listener of this runner's app, under their own ``limits``."""
        server = self.server
        if not isinstance(server, _QuietServer):
            raise TypeError("call setup() before adding a listener")
        return server.factory(limits)
