"""Drives tokenproxy_client against a running proxy and prints what it saw, as one JSON line.

Run as a script by the interpreter of a venv that holds only the client and its aiohttp
(tests/client/test_distribution.py), so it imports nothing but those and the standard
library. Reads {"base", "keys", "card": {"number", "cvc"}} as JSON from standard input.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import Any

import aiohttp

from tokenproxy_client import (
    APIConnectionError,
    APITimeoutError,
    NotFoundError,
    PermissionDeniedError,
    RetryPolicy,
    TokenProxyClient,
)

ONCE = RetryPolicy(max_retries=0)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and never answer."""
    await asyncio.sleep(30)
    writer.close()


async def main(given: dict[str, Any]) -> dict[str, Any]:
    """Every kind of call the client makes, and the errors it raises, against the proxy."""
    base, keys, card = given["base"], given["keys"], given["card"]
    seen: dict[str, Any] = {"aiohttp": aiohttp.__version__}
    async with TokenProxyClient(base, keys["checkout"], retry=ONCE) as checkout:
        made = await checkout.tokenize_card(
            card["number"], 12, 2034, card["cvc"], customer_ref="cus-smoke", metadata={"o": "1"}
        )
    seen["card"] = [made.token[:10], made.last4, made.created_at is not None]
    async with TokenProxyClient(base, keys["orders"], retry=ONCE) as orders:
        view = await orders.read(made.token)
        seen["view"] = [view.masked == made.masked, view.metadata]
        listed = await orders.list_customer_tokens("cus-smoke", page_size=1)
        seen["listed"] = [v.token == made.token for v in listed]
        try:
            await orders.resolve(made.token)
        except PermissionDeniedError as exc:
            seen["resolve_as_orders"] = exc.code
        try:
            await orders.read("vtok_card_missing")
        except NotFoundError as exc:
            seen["missing"] = [exc.status, exc.code, str(exc.request_id)[:4]]
    async with TokenProxyClient(base, keys["billing"], retry=ONCE) as billing:
        resolved = await billing.resolve(made.token)
        seen["resolved"] = [resolved.partner, resolved.partner_reference[:3]]
    async with TokenProxyClient(f"http://127.0.0.1:{closed_port()}", "k", retry=ONCE) as nowhere:
        try:
            await nowhere.read("vtok_card_x")
        except APIConnectionError as exc:
            seen["unreachable"] = type(exc).__name__
    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with TokenProxyClient(f"http://127.0.0.1:{port}", "k", retry=ONCE, timeout=0.5) as mute:
        try:
            await mute.read("vtok_card_x")
        except APITimeoutError as exc:
            seen["timeout"] = type(exc).__name__
    server.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.load(sys.stdin)))))
