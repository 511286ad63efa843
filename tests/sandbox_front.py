"""Scripting and reading the sandbox partner's front (tokenproxy_sandbox.front) in tests."""

from __future__ import annotations

from typing import Any

import aiohttp
from tokenproxy_sandbox.launcher import Localstripe


async def _call(localstripe: Localstripe, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, localstripe.base_url + path, json=body) as resp,
    ):
        resp.raise_for_status()
        return await resp.json()


async def recorded_requests(localstripe: Localstripe) -> list[dict[str, str | None]]:
    """What the front recorded of the requests it received, oldest first."""
    recorded: list[dict[str, str | None]] = await _call(localstripe, "GET", "/_sandbox/requests")
    return recorded


async def script_fault(
    localstripe: Localstripe,
    path: str,
    status: int,
    body: dict[str, Any],
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    times: int = 1,
) -> None:
    """Make the front answer the next ``times`` requests to ``path`` (a regex) so."""
    fault = {
        "method": method,
        "path": path,
        "status": status,
        "body": body,
        "headers": headers or {},
        "times": times,
    }
    await _call(localstripe, "POST", "/_sandbox/faults", fault)


async def reset_front(localstripe: Localstripe) -> None:
    """Forget scripted faults and recorded requests."""
    await _call(localstripe, "DELETE", "/_sandbox/faults")


async def limit_rate(localstripe: Localstripe, rate: float, burst: int) -> None:
    """Make the front refuse API requests past ``burst`` at ``rate`` a second with 429."""
    await _call(localstripe, "PUT", "/_sandbox/rate_limit", {"rate": rate, "burst": burst})


async def rate_limited(localstripe: Localstripe) -> int:
    """How many API requests the front's rate limiter refused since it was set."""
    answer: dict[str, int] = await _call(localstripe, "GET", "/_sandbox/rate_limit")
    return answer["refused"]
