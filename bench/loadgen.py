"""A small HTTP load generator: when wrk is not installed, and for paced (fixed-rate) runs.

Run as its own process (``python -m bench.loadgen SPEC_JSON``, or the spec on stdin) so it
never shares an event loop or a core's time slice accounting with the server under test.
It prints one ``BENCH_RESULT {json}`` line in the same shape as the wrk script's ``done``
hook. With ``rate`` in the spec it is an open loop at that rate (wrk cannot pace).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp


async def _worker(
    session: aiohttp.ClientSession,
    spec: dict[str, Any],
    *,
    deadline: float,
    start_index: int,
    latencies: list[float],
    counts: dict[str, int],
) -> None:
    paths: list[str] = spec["paths"]
    body = spec.get("body")
    # Open loop at a fixed rate when `rate` is given (requests/s over all connections): each
    # connection sends on its own schedule, so a slow answer does not slow the offered load.
    period = spec["connections"] / spec["rate"] if spec.get("rate") else 0.0
    next_at = (
        time.perf_counter() + period * (start_index % spec["connections"]) / spec["connections"]
    )
    i = start_index
    while time.perf_counter() < deadline:
        if period:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at += period
        url = spec["base"] + paths[i % len(paths)]
        i += 1
        started = time.perf_counter()
        try:
            async with session.request(
                spec["method"], url, data=body, headers=spec["headers"]
            ) as resp:
                await resp.read()
                if resp.status >= 400:
                    counts["non2xx"] += 1
        except (aiohttp.ClientError, OSError):
            counts["errors"] += 1
            continue
        latencies.append(time.perf_counter() - started)


async def run(spec: dict[str, Any]) -> dict[str, int]:
    """Drive ``spec['connections']`` concurrent loops for ``spec['duration']`` seconds."""
    latencies: list[float] = []
    counts = {"non2xx": 0, "errors": 0}
    connector = aiohttp.TCPConnector(limit=spec["connections"])
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        deadline = started + spec["duration"]
        await asyncio.gather(
            *(
                _worker(
                    session,
                    spec,
                    deadline=deadline,
                    start_index=n * 7919 if not spec.get("rate") else n,
                    latencies=latencies,
                    counts=counts,
                )
                for n in range(spec["connections"])
            )
        )
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> int:
        if not latencies:
            return 0
        return int(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6)

    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "non2xx": counts["non2xx"],
        "errors": counts["errors"],
    }


if __name__ == "__main__":
    result = asyncio.run(run(json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())))
    print("BENCH_RESULT " + json.dumps(result), flush=True)
