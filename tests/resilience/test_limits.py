"""Limits on hostile input: body size, header size, slow bodies, JSON depth, metadata keys."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given
from hypothesis import strategies as st

from proxy.web.limits import MAX_JSON_DEPTH, json_too_deep
from tests.cards import VISA
from tests.conftest import LOG_STREAM, RunningProxy
from tests.proxy.test_cards_api import card_body
from tests.resilience.conftest import MakeProxy


async def raw_exchange(proxy: RunningProxy, data: bytes) -> bytes:
    """Send raw bytes to the API listener and read until the server closes."""
    reader, writer = await asyncio.open_connection(
        proxy.settings.listen.host, proxy.settings.listen.port
    )
    writer.write(data)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    return response


async def test_body_over_limit_is_413(fproxy: RunningProxy) -> None:
    """A body over TOKENPROXY_MAX_BODY_BYTES is refused with 413 before parsing."""
    status, body, _ = await fproxy.request(
        "POST",
        "/v1/cards",
        client="checkout",
        data=b'{"number": "' + b"4" * 20_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert status == 413
    assert body is not None
    assert body["error"]["code"] == "payload_too_large"


async def test_header_over_limit_is_refused_without_echo(make_proxy: MakeProxy) -> None:
    """A header over TOKENPROXY_MAX_HEADER_BYTES is a 4xx and its value is not echoed."""
    proxy = await make_proxy(TOKENPROXY_MAX_HEADER_BYTES="2048")
    logged_before = LOG_STREAM.getvalue().count("http_protocol_error")
    secret = VISA.number * 200
    response = await raw_exchange(
        proxy,
        b"POST /v1/cards HTTP/1.1\r\nHost: x\r\nX-Card: "
        + secret.encode()
        + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    status = int(response.split(b" ", 2)[1])
    assert status == 400
    assert b"header_too_large" in response
    assert VISA.number.encode() not in response
    assert VISA.number[-10:] not in LOG_STREAM.getvalue()
    # The error was logged into the buffer just scanned (it is live).
    assert LOG_STREAM.getvalue().count("http_protocol_error") > logged_before


async def test_header_under_limit_is_accepted(make_proxy: MakeProxy) -> None:
    """Headers within the limit pass through to the route (here: 401 without a key)."""
    proxy = await make_proxy(TOKENPROXY_MAX_HEADER_BYTES="2048")
    status, _, _ = await proxy.request(
        "POST", "/v1/cards", json=card_body(), headers={"X-Pad": "p" * 1500}
    )
    assert status == 401


async def test_slow_body_is_cut_off_with_408(make_proxy: MakeProxy) -> None:
    """A body trickled slower than TOKENPROXY_BODY_READ_TIMEOUT gets 408 and a closed line."""
    proxy = await make_proxy(TOKENPROXY_BODY_READ_TIMEOUT="0.5")
    body = json.dumps(card_body()).encode()
    reader, writer = await asyncio.open_connection(
        proxy.settings.listen.host, proxy.settings.listen.port
    )
    head = (
        "POST /v1/cards HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {proxy.keys['checkout']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head)
    sent = 0
    closed = False
    # One byte every 0.1 s: the whole body would need ~10 s.
    for byte in body:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, OSError):
            closed = True
            break
        sent += 1
        await asyncio.sleep(0.1)
        if reader.at_eof() or len(reader._buffer) > 0:  # type: ignore[attr-defined]
            break
    response = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    assert closed or sent < len(body)
    assert response.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in response
    assert VISA.number.encode() not in response


async def test_json_nesting_limit_is_explicit(fproxy: RunningProxy) -> None:
    """JSON deeper than the limit is 400 json_too_deep; at the limit it is parsed normally."""
    too_deep = b'{"metadata": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}"
    status, body, _ = await fproxy.request(
        "POST",
        "/v1/cards",
        client="checkout",
        data=too_deep,
        headers={"Content-Type": "application/json"},
    )
    assert status == 400
    assert body is not None
    assert body["error"]["code"] == "json_too_deep"
    at_limit = b'{"metadata": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    status, body, _ = await fproxy.request(
        "POST",
        "/v1/cards",
        client="checkout",
        data=at_limit,
        headers={"Content-Type": "application/json"},
    )
    assert body is not None
    assert body["error"]["code"] != "json_too_deep"


async def test_too_many_metadata_keys_is_422(fproxy: RunningProxy) -> None:
    """More than 20 metadata keys is refused with 422 metadata_too_many_keys."""
    metadata = {f"k{i}": "v" for i in range(21)}
    status, body, _ = await fproxy.request(
        "POST", "/v1/cards", client="checkout", json=card_body(metadata=metadata)
    )
    assert status == 422
    assert body is not None
    assert body["error"]["code"] == "metadata_too_many_keys"


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)


@given(value=_json, limit=st.integers(min_value=0, max_value=12))
def test_json_too_deep_matches_the_parsed_depth(value: object, limit: int) -> None:
    """The byte scanner agrees with the real nesting depth, brackets inside strings included."""
    raw = json.dumps(value).encode()
    assert json_too_deep(raw, limit) == (_depth(value) > limit)
