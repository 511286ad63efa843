"""The API process's runtime tasks: the event-loop lag probe and its metric."""

from __future__ import annotations

import asyncio
import contextlib
import time

from proxy.infra.metrics import Metrics
from proxy.web.appkeys import METRICS
from proxy.web.runtime import probe_loop_lag
from tests.conftest import RunningProxy


def lag_sample(metrics: Metrics, suffix: str) -> float:
    """One sample of the loop-lag histogram (``_count`` or ``_sum``)."""
    value = metrics.registry.get_sample_value(f"tokenproxy_event_loop_lag_seconds{suffix}")
    return value or 0.0


async def test_probe_records_the_time_the_loop_was_blocked() -> None:
    """A loop blocked for 50 ms shows at least 40 ms of lag in the histogram's sum."""
    metrics = Metrics()
    probe = asyncio.create_task(probe_loop_lag(metrics, interval=0.01))
    try:
        await asyncio.sleep(0)  # let the probe arm its timer
        time.sleep(0.05)  # noqa: ASYNC251 - the blocking call is the point of the test
        for _ in range(100):
            if lag_sample(metrics, "_count") >= 1:
                break
            await asyncio.sleep(0.01)
    finally:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
    assert lag_sample(metrics, "_count") >= 1
    assert lag_sample(metrics, "_sum") >= 0.04


async def test_serving_process_exports_event_loop_lag(proxy: RunningProxy) -> None:
    """The ops listener's /metrics carries tokenproxy_event_loop_lag_seconds, observed live."""
    for _ in range(200):
        if lag_sample(proxy.app[METRICS], "_count") >= 1:
            break
        await asyncio.sleep(0.05)
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        body = await resp.text()
    assert "# TYPE tokenproxy_event_loop_lag_seconds histogram" in body
    counts = [
        line
        for line in body.splitlines()
        if line.startswith("tokenproxy_event_loop_lag_seconds_count")
    ]
    assert len(counts) == 1
    assert float(counts[0].split()[-1]) >= 1
