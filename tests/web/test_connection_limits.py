"""Slow request heads and connection floods over real sockets: closed by deadline, capped."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tokenproxy_sandbox.launcher import Localstripe

from proxy.infra.settings import HostPort
from tests.cards import VISA
from tests.conftest import RunningProxy, make_settings, running_proxy
from tests.helpers import metrics_text

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# Far longer than any deadline under test: reaching it means the server never closed.
PATIENCE = 20.0


@pytest.fixture
def proxy_env() -> dict[str, str]:
    """A short header deadline, so a test sees it pass."""
    return {"TOKENPROXY_HEADER_TIMEOUT": "0.5"}


@contextlib.asynccontextmanager
async def connect(address: HostPort) -> AsyncIterator[Streams]:
    """A raw connection to ``address``, closed at the end of the block."""
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    try:
        return await asyncio.wait_for(reader.read(), timeout=PATIENCE)
    except ConnectionResetError:
        return b""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response on a kept-alive connection: its status and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=PATIENCE)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    return int(head.split(b" ", 2)[1]), body


GET = b"GET /v1/nothing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize("listener", ["listen", "ops_listen"])
async def test_incomplete_request_head_is_closed_after_the_deadline(
    proxy: RunningProxy, listener: str
) -> None:
    """A connection that sends half a request head and stops is closed, unanswered."""
    async with connect(getattr(proxy.settings, listener)) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await writer.drain()
        assert await closed_by_server(reader) == b""


async def test_silent_connection_is_closed_after_the_deadline(proxy: RunningProxy) -> None:
    """A connection that never sends a byte is closed."""
    async with connect(proxy.settings.listen) as (reader, _):
        assert await closed_by_server(reader) == b""


async def test_trickled_header_lines_do_not_extend_the_deadline(proxy: RunningProxy) -> None:
    """A client sending a header line every 0.2 s is still closed: the deadline is for the head."""
    async with connect(proxy.settings.listen) as (reader, writer):
        writer.write(b"GET /v1/nothing HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        for line in range(int(PATIENCE / 0.2)):
            try:
                writer.write(b"X-Trickle-%d: 1\r\n" % line)
                await writer.drain()
                data = await asyncio.wait_for(reader.read(), timeout=0.2)
            except TimeoutError:
                continue
            except ConnectionError:
                data = b""
            closed = data == b""
            break
        assert closed


async def test_idle_keep_alive_connection_is_closed_after_the_deadline(
    proxy: RunningProxy,
) -> None:
    """After an answer, a kept-alive connection has the same deadline for its next request head."""
    async with connect(proxy.settings.listen) as (reader, writer):
        writer.write(GET)
        status, _ = await read_response(reader)
        assert status == 404
        assert await closed_by_server(reader) == b""
    text = await metrics_text(proxy)
    assert 'tokenproxy_connections_closed_total{listener="api",reason="header_timeout"}' in text


async def test_slow_body_is_not_cut_by_the_header_deadline(proxy: RunningProxy) -> None:
    """Once the head is complete, a body trickling past the header deadline is still answered."""
    body = json.dumps(
        {"number": VISA.number, "exp_month": 12, "exp_year": 2030, "cvc": VISA.cvc}
    ).encode()
    head = (
        "POST /v1/cards HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {proxy.keys['checkout']}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    async with connect(proxy.settings.listen) as (reader, writer):
        writer.write(head)
        for piece in (body[:10], body[10:20], body[20:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.4)  # three pauses: longer than the header deadline in all
        status, _ = await read_response(reader)
        assert status == 201


@pytest.fixture
async def capped(
    tmp_path: Path, keyring_path: Path, client_keys: dict[str, str], localstripe: Localstripe
) -> AsyncIterator[RunningProxy]:
    """A proxy that takes at most 4 connections on its API listener."""
    settings = make_settings(
        tmp_path,
        keyring_path,
        localstripe.base_url,
        {"TOKENPROXY_MAX_CONNECTIONS": "4", "TOKENPROXY_HEADER_TIMEOUT": "60"},
    )
    async with running_proxy(tmp_path, client_keys, settings) as running:
        yield running


async def test_connections_over_the_cap_are_refused(capped: RunningProxy) -> None:
    """Over the cap a new connection is closed at once; the held ones and /healthz still answer."""
    address = capped.settings.listen
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(connect(address)) for _ in range(4)]
        for reader, writer in held:
            writer.write(GET)
            assert (await read_response(reader))[0] == 404
        for _ in range(3):
            async with connect(address) as (reader, writer):
                writer.write(GET)
                assert await closed_by_server(reader) == b""
        async with capped.http.get(capped.ops + "/healthz") as resp:
            assert resp.status == 200
        for reader, writer in held:
            writer.write(GET)
            assert (await read_response(reader))[0] == 404
    # The held connections are closed: the listener takes new ones again.
    for _attempt in range(100):
        async with connect(address) as (reader, writer):
            writer.write(GET)
            try:
                status = (await read_response(reader))[0]
            except (asyncio.IncompleteReadError, ConnectionError):
                await asyncio.sleep(0.05)  # the server has not yet seen the others close
                continue
            assert status == 404
            break
    else:
        pytest.fail("the listener never took a connection again")
    text = await metrics_text(capped)
    assert 'tokenproxy_connections_closed_total{listener="api",reason="connection_limit"} 3.0' in (
        text
    )
