"""Request ids, authentication, error rendering and the canonical log line.

This is the one place where errors become HTTP responses: a ProxyError renders its
own code and status; aiohttp's HTTP exceptions are translated; anything else is a
500 with a fixed message (the exception is logged, scrubbed, never sent).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from base64 import urlsafe_b64encode
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError

from proxy.domain.errors import (
    JSON_CHARSET,
    JSON_CONTENT_TYPE,
    AuthenticationFailed,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ProxyError,
    RequestTimeout,
    UnsupportedMediaType,
    echoable,
)
from proxy.infra.clients import Client
from proxy.infra.tls import identity_matches
from proxy.web import authguard, publishable
from proxy.web.api import PUBLIC_TEMPLATES, QUERY_PARAMETERS
from proxy.web.appkeys import CLIENTS, METRICS, SETTINGS
from proxy.web.clientaddr import client_address
from proxy.web.limits import MAX_JSON_DEPTH, json_too_deep
from proxy.web.listeners import public_only

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CLIENT_KEY = web.RequestKey("client", Client)
REQUEST_ID_KEY = web.RequestKey("request_id", str)
TOKEN_KEY = web.RequestKey("token", str)

_log = structlog.get_logger("tokenproxy.request")
_UNMATCHED = "unmatched"
# HTTP lets a client send any token as a method, digits included: anything else is
# "OTHER" so a metric label (never scrubbed) cannot carry a card number or grow unbounded.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def new_request_id() -> str:
    """A fresh request id; never taken from the client, whose header could carry anything."""
    # secrets.token_urlsafe(12) without its two wrapper calls: 96 random bits, same text.
    return "req_" + urlsafe_b64encode(os.urandom(12)).decode("ascii")


def method_label(request: web.Request) -> str:
    """The request method when it is a standard one, else "OTHER" (a bounded label value)."""
    method = request.method
    return method if method in _METHODS else "OTHER"


def route_template(request: web.Request) -> str:
    """The matched route's template (bounded label value), or 'unmatched'."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else _UNMATCHED


def _translate_http(exc: web.HTTPException) -> ProxyError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("No such route.", code="route_not_found")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowed("Method not allowed on this route.", headers={"Allow": allowed})
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("The request body is too large.")
    if 400 <= exc.status < 500:
        return InvalidRequest("The request could not be processed.")
    return ProxyError("An internal error occurred.")


def _check_query(request: web.Request) -> None:
    route = route_template(request)
    if route == _UNMATCHED:
        return  # a 404 tells more than a complaint about the query
    # Any parameter a route does not declare is refused rather than silently ignored (a
    # client's typo, e.g. `limt`, would otherwise look like it worked).
    allowed = QUERY_PARAMETERS.get(route, frozenset())
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        # The name is the client's text (it could be a card number): only a short plain
        # name is echoed, and none when no unknown name is one.
        named = [name for name in map(echoable, unknown) if name]
        raise InvalidRequest(
            "This route takes no such query parameter.",
            code="unknown_parameter",
            param=named[0] if named else None,
        )
    # Which of two values counts would be the reader's choice (aiohttp takes the first, a
    # proxy in front may take the last): refuse instead of guessing.
    repeated = sorted({name for name in request.query if len(request.query.getall(name)) > 1})
    if repeated:
        raise InvalidRequest(
            "A query parameter may be given once.",
            code="duplicate_parameter",
            param=echoable(repeated[0]),
        )


def check_listener(request: web.Request) -> None:
    """404, as for an unknown route, when an internal-only route is asked on the public listener.

    Only while an internal listener is configured (with one listener everything is served
    there). The answer is the unknown route's own, and the public /openapi.json lists
    only the public routes, so the public side learns nothing of what the internal side
    serves; the metric tells operators a client is misdirected.
    """
    if not public_only(request):
        return
    route = route_template(request)
    if route == _UNMATCHED or route in PUBLIC_TEMPLATES:
        return
    metrics = request.app[METRICS]
    metrics.child(metrics.wrong_listener, route).inc()
    raise NotFound("No such route.", code="route_not_found")


def render_error(error: ProxyError, request_id: str) -> web.Response:
    """The JSON error response for ``error``."""
    response = web.Response(
        body=error.rendered(request_id),
        status=error.status,
        content_type=JSON_CONTENT_TYPE,
        charset=JSON_CHARSET,
    )
    response.headers.update(error.headers)
    return response


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Assign a request id, render errors, observe metrics and write the canonical line."""
    started = time.perf_counter()
    request_id = new_request_id()
    request[REQUEST_ID_KEY] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    error: ProxyError | None = None
    in_flight = request.app[METRICS].in_flight
    in_flight.inc()
    try:
        try:
            check_listener(request)
            if request.query_string:
                _check_query(request)
            response = await handler(request)
        except ProxyError as exc:
            error = exc
        except web.HTTPException as exc:
            error = _translate_http(exc)
        except Exception:  # noqa: BLE001 - the last line of defence: render 500, log scrubbed
            _log.exception("unhandled_error")
            error = ProxyError("An internal error occurred.")
        if error is not None:
            response = render_error(error, request_id)
            if error.headers.get("Connection") == "close":
                response.force_close()
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        in_flight.dec()
        status = response.status if error is None else error.status
        _finish(request, started, status, error)
        structlog.contextvars.unbind_contextvars("request_id")


@web.middleware
async def ops_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The ops listener's errors (unknown route, wrong method) as our JSON error."""
    try:
        return await handler(request)
    except ProxyError as exc:
        error = exc
    except web.HTTPException as exc:
        error = _translate_http(exc)
    except Exception:  # noqa: BLE001 - as on the API: a fixed 500, the exception logged scrubbed
        _log.exception("unhandled_error")
        error = ProxyError("An internal error occurred.")
    request_id = new_request_id()
    response = render_error(error, request_id)
    response.headers["X-Request-Id"] = request_id
    return response


def _finish(request: web.Request, started: float, status: int, error: ProxyError | None) -> None:
    duration = time.perf_counter() - started
    route = route_template(request)
    method = method_label(request)
    metrics = request.app[METRICS]
    client = request.get(CLIENT_KEY)
    who = client_label(client)
    metrics.child(metrics.requests, route, method, f"{status // 100}xx", who).inc()
    metrics.child(metrics.request_duration, route, method, who).observe(duration)
    _log.info(
        "request",
        method=method,
        route=route,
        status=status,
        duration_ms=round(duration * 1000, 3),
        client=client.name if client else None,
        address=client_address(request),
        token=request.get(TOKEN_KEY),
        error_code=error.code if error else None,
    )


def client_label(client: Client | None) -> str:
    """The metrics' ``client`` label: a secret key's client name, "publishable" or "anonymous".

    Names come from the clients file (a bounded set, validated to hold no card number);
    publishable keys share one value, as a shop may hold many and they tell nothing apart
    that the route does not.
    """
    if client is None:
        return "anonymous"
    return "publishable" if client.publishable else client.name


async def authenticate(request: web.Request, scopes: frozenset[str]) -> Client:
    """The client behind the bearer key, if it holds one of ``scopes``; else 401/403."""
    authguard.check(request)
    headers = request.headers.getall("Authorization", [])
    scheme, _, key = headers[0].partition(" ") if headers else ("", "", "")
    metrics = request.app[METRICS]
    if len(headers) > 1:
        # Two credentials are ambiguous (a proxy in front may check one, we another).
        metrics.auth_failures.labels("invalid_key").inc()
        await authguard.failed(request, "invalid_key")
        raise AuthenticationFailed(
            "Send exactly one Authorization header.",
            headers={"WWW-Authenticate": 'Bearer realm="tokenproxy", error="invalid_request"'},
        )
    if scheme.lower() != "bearer" or not key.strip():
        metrics.auth_failures.labels("missing_key").inc()
        await authguard.failed(request, "missing_key")
        raise AuthenticationFailed(
            "Authentication required: send Authorization: Bearer <client key>.",
            code="missing_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="tokenproxy"'},
        )
    client = request.app[CLIENTS].authenticate(key.strip())
    if client is None:
        metrics.auth_failures.labels("invalid_key").inc()
        await authguard.failed(request, "invalid_key")
        raise AuthenticationFailed(
            "The client key is not valid.",
            headers={"WWW-Authenticate": 'Bearer realm="tokenproxy", error="invalid_token"'},
        )
    request[CLIENT_KEY] = client
    if client.cert_identity is not None and not _presents(request, client.cert_identity):
        # A key bound to a certificate is worth nothing without it: a leaked key alone
        # (a log, a laptop) cannot resolve tokens.
        metrics.auth_failures.labels("certificate_required").inc()
        await authguard.failed(request, "certificate_required", actor=client.name)
        raise AuthenticationFailed(
            "This client key is accepted only with its client certificate.",
            code="client_certificate_required",
            headers={"WWW-Authenticate": 'Bearer realm="tokenproxy", error="invalid_token"'},
        )
    if not client.scopes & scopes:
        metrics.auth_failures.labels("missing_scope").inc()
        await authguard.failed(request, "missing_scope", actor=client.name)
        raise PermissionDenied(
            f"This client lacks the scope this route needs ({' or '.join(sorted(scopes))})."
        )
    if client.publishable:
        await publishable.check(request, client)
    return client


def _presents(request: web.Request, identity: str) -> bool:
    transport = request.transport
    # "peercert" is the verified certificate: set only where the listener asks for one.
    peercert = transport.get_extra_info("peercert") if transport is not None else None
    return identity_matches(identity, peercert)


def refuse_customer_fields_from_publishable(client: Client, body: object) -> None:
    """403 when a publishable key sends customer_ref or metadata.

    A publishable key is in every shopper's page, and a script outside a browser can
    send any Origin: taking customer_ref from it would let anyone attach their cards to
    another customer's saved payment methods. Servers attach with secret keys.
    """
    if (
        client.publishable
        and isinstance(body, dict)
        and ({"customer_ref", "metadata"} & body.keys())
    ):
        raise PermissionDenied(
            "A publishable key cannot set customer_ref or metadata; do that from a server.",
            code="publishable_key_restricted",
        )


# What aiohttp decodes; it passes any other coding through undecoded, so a body labelled
# e.g. "gzip, gzip" would be read as something else than what its sender meant.
_CONTENT_ENCODINGS = frozenset({"identity", "gzip", "deflate"})


def _check_content_encoding(request: web.Request) -> None:
    values = request.headers.getall("Content-Encoding", [])
    if not values:
        return
    # Several headers are ambiguous: aiohttp's two parsers do not even pick the same one.
    if len(values) > 1 or not values[0].isascii() or values[0].lower() not in _CONTENT_ENCODINGS:
        raise UnsupportedMediaType(
            "Content-Encoding must be one of identity, gzip or deflate.",
            code="unsupported_content_encoding",
            headers={"Connection": "close"},
        )


def _unreadable_body() -> InvalidRequest:
    return InvalidRequest(
        "The request body could not be read.",
        code="malformed_request",
        headers={"Connection": "close"},
    )


async def read_body(request: web.Request) -> bytes:
    """The raw JSON request body (size-limited like every body); 415 for another media type.

    The body must arrive within TOKENPROXY_BODY_READ_TIMEOUT (else 408 and the
    connection is closed): a client trickling bytes must not hold a handler forever.
    """
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Send the body as application/json.")
    _check_content_encoding(request)
    try:
        async with asyncio.timeout(request.app[SETTINGS].body_read_timeout):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(
            "The request body did not arrive in time.", headers={"Connection": "close"}
        ) from None
    except web.RequestPayloadError as exc:
        # A body that does not decode as its Content-Encoding says, or a malformed chunked
        # body, surfaces half-way through the read: the client's fault, never quoted back.
        if isinstance(exc.__cause__, ContentEncodingError):
            raise InvalidRequest(
                "The request body is not valid for its Content-Encoding.",
                code="invalid_content_encoding",
                headers={"Connection": "close"},
            ) from None
        raise _unreadable_body() from None
    except (OSError, ValueError):
        raise _unreadable_body() from None
    return raw


async def read_json(request: web.Request) -> object:
    """The request body as JSON; 415 for another media type, 400 for bad or too deep JSON."""
    raw = await read_body(request)
    if json_too_deep(raw):
        raise InvalidRequest(
            f"JSON may nest at most {MAX_JSON_DEPTH} levels deep.", code="json_too_deep"
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        # Never echo the parser's message: it quotes the body, which may hold a card number.
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from None
