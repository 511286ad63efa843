"""The ops listener answers what it does not serve with our JSON error."""

from __future__ import annotations

import json

import pytest

from tests.cards import VISA
from tests.conftest import RunningProxy


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nothing", 404, "route_not_found"),
        ("GET", f"/{VISA.number}", 404, "route_not_found"),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("HEAD", "/metrics", 405, "method_not_allowed"),
    ],
)
async def test_ops_listener_errors_are_our_json(
    proxy: RunningProxy, method: str, path: str, status: int, code: str
) -> None:
    """An unknown route or wrong method on the ops listener is our JSON error, without echo."""
    async with proxy.http.request(method, proxy.ops + path) as resp:
        assert resp.status == status
        assert resp.content_type == "application/json"
        assert resp.headers["X-Request-Id"].startswith("req_")
        raw = await resp.read()
    assert VISA.middle.encode() not in raw
    if method != "HEAD":
        error = json.loads(raw)["error"]
        assert error["code"] == code
