"""What /metrics exports: bounded labels, no data values."""

from __future__ import annotations

import asyncio

from tests.conftest import RunningProxy

PAN = "4111111111111111"


async def _raw(base: str, request: bytes) -> bytes:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        return await reader.read(65536)
    finally:
        writer.close()


async def test_nonstandard_methods_share_one_label_and_never_carry_data(
    proxy: RunningProxy,
) -> None:
    """A client-chosen method is a label only when standard; anything else is OTHER."""
    answer = await _raw(proxy.base, b"PROPFIND /v1/cards HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405")
    # The HTTP parser refuses a number as a method before the app sees it; either way
    # it must not reach a label.
    await _raw(proxy.base, f"{PAN} /v1/cards HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        text = await resp.text()
    assert PAN not in text
    assert 'method="PROPFIND"' not in text
    assert 'method="OTHER"' in text


async def test_labelled_children_are_cached_per_label_values(proxy: RunningProxy) -> None:
    """Two requests on one route reuse one cached child, and the counter adds both."""
    for _ in range(2):
        status, _, _ = await proxy.request("GET", "/openapi.json")
        assert status == 200
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        text = await resp.text()
    line = next(
        x
        for x in text.splitlines()
        if x.startswith("tokenproxy_http_requests_total{")
        and 'route="/openapi.json"' in x
        and 'status_class="2xx"' in x
    )
    assert float(line.rsplit(" ", 1)[1]) == 2.0
