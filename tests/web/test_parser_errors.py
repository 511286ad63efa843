"""Requests aiohttp's HTTP parser rejects get our JSON error and never an echo of the input."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.cards import VISA
from tests.conftest import RunningProxy


async def raw_exchange(proxy: RunningProxy, payload: bytes) -> bytes:
    """Send raw bytes to the API listener and read the whole answer."""
    host, port = proxy.settings.listen.host, proxy.settings.listen.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return data


@pytest.mark.parametrize(
    "payload",
    [
        f"{VISA.number} /v1/cards HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"POST /v1/cards?{VISA.number} HTTP/9.9\r\nHost: x\r\n\r\n".encode(),
        f"POST /v1/cards HTTP/1.1\r\nHost: x\r\nX-Card {VISA.number}\r\n\r\n".encode(),
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + f"{VISA.number}\r\n\r\n".encode(),
    ],
    ids=["pan-as-method", "bad-version", "bad-header", "huge-header"],
)
async def test_parser_errors_are_json_and_echo_nothing(proxy: RunningProxy, payload: bytes) -> None:
    """A malformed request line or header gets a 4xx JSON error body without the card number."""
    answer = await raw_exchange(proxy, payload)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500
    assert VISA.number.encode() not in answer
    assert VISA.middle.encode() not in answer
    error = json.loads(body)["error"]
    assert error["code"] in {"malformed_request", "header_too_large"}


async def test_malformed_chunked_body_is_a_400(proxy: RunningProxy) -> None:
    """A chunked body with a garbage chunk-size line is refused as malformed, never a 500."""
    key = proxy.keys["checkout"]
    payload = (
        "POST /v1/cards HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"zz{VISA.number}\r\n{{}}\r\n0\r\n\r\n"
    ).encode()
    answer = await raw_exchange(proxy, payload)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500
    assert VISA.number.encode() not in answer


async def test_unparsable_requests_are_counted(proxy: RunningProxy) -> None:
    """A request aiohttp cannot parse is counted as a malformed request closed by the server."""
    for _ in range(2):
        await raw_exchange(proxy, f"{VISA.number} / HTTP/1.1\r\n\r\n".encode())
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        text = await resp.text()
    assert (
        'tokenproxy_connections_closed_total{listener="api",reason="malformed_request"} 2.0' in text
    )
