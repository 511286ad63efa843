"""Rendering use-case answers as aiohttp responses, and reading the headers they need."""

from __future__ import annotations

from aiohttp import web

from proxy.core.create import Call
from proxy.core.idempotent import HEADER, Answer
from proxy.core.idempotent import idempotency_key as parse_idempotency_key
from proxy.domain.errors import JSON_CHARSET, JSON_CONTENT_TYPE
from proxy.web.clientaddr import client_address
from proxy.web.middleware import REQUEST_ID_KEY, TOKEN_KEY


def idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key: None when absent; 400 unless 1-255 printable ASCII."""
    return parse_idempotency_key(request.headers.getall(HEADER, []))


async def creation_call(request: web.Request, client: str, key: str | None) -> Call:
    """The request as a token creation sees it: client, key, the exact bytes, request id."""
    return Call(
        client=client,
        key=key,
        raw=await request.read(),  # cached by read_json: the bytes the key is bound to
        request_id=request[REQUEST_ID_KEY],
        origin=client_address(request),
    )


def answer_response(request: web.Request, answer: Answer) -> web.Response:
    """A stored or fresh answer as sent: status, bytes, the JSON Content-Type, its headers."""
    if answer.token is not None:
        request[TOKEN_KEY] = answer.token
    return web.Response(
        status=answer.status,
        body=answer.body,
        content_type=JSON_CONTENT_TYPE,
        charset=JSON_CHARSET,
        headers=answer.headers,
    )
