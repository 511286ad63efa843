"""Per-process runtime tasks of the API app: the event-loop lag probe and KEK renewal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from proxy.infra.metrics import Metrics
from proxy.web.appkeys import METRICS, SERVICES, SETTINGS
from proxy.web.tasks import cancel_and_wait
from vault import VaultError

_log = structlog.get_logger("tokenproxy.runtime")

# Four looks a second: a stall of a few milliseconds shows up within a scrape interval,
# and the probe itself costs a timer wake-up, nothing measurable.
LOOP_PROBE_INTERVAL = 0.25


async def probe_loop_lag(metrics: Metrics, interval: float = LOOP_PROBE_INTERVAL) -> None:
    """Observe how late each timer fires: the time the loop was busy with something else."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        metrics.event_loop_lag.observe(max(0.0, loop.time() - due))


async def renew_keys_every(seconds: float, renew: Callable[[], Awaitable[None]]) -> None:
    """Re-confirm the KEKs every ``seconds`` (in a thread, see Vault.renew_keys), forever."""
    while True:
        await asyncio.sleep(seconds)
        started = time.perf_counter()
        try:
            await renew()
        except VaultError as exc:  # pragma: no cover - providers log and keep what they hold
            _log.warning("key_renewal_failed", error=type(exc).__name__)
            continue
        _log.debug("keys_renewed", seconds=round(time.perf_counter() - started, 3))


async def runtime_tasks(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the loop-lag probe, and the periodic KEK renewal at the key service."""
    vault = app[SERVICES].vault
    tasks = [
        asyncio.create_task(probe_loop_lag(app[METRICS])),
        asyncio.create_task(renew_keys_every(app[SETTINGS].kms_refresh_interval, vault.renew_keys)),
    ]
    yield
    await cancel_and_wait(*tasks)
