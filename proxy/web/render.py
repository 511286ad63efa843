"""Rendering use-case answers as aiohttp responses, and reading the headers they need."""

from __future__ import annotations

from aiohttp import web

from proxy.core.idempotent import HEADER, Answer
from proxy.core.idempotent import idempotency_key as parse_idempotency_key
from proxy.domain.errors import JSON_CHARSET, JSON_CONTENT_TYPE


def idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key: None when absent; 400 unless 1-255 printable ASCII."""
    return parse_idempotency_key(request.headers.getall(HEADER, []))


def answer_response(answer: Answer) -> web.Response:
    """A stored or fresh answer as sent: status, bytes, the JSON Content-Type, its headers."""
    return web.Response(
        status=answer.status,
        body=answer.body,
        content_type=JSON_CONTENT_TYPE,
        charset=JSON_CHARSET,
        headers=answer.headers,
    )
