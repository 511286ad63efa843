"""Following the clients file while serving: a poll and SIGHUP, each reload logged and counted.

`tokenproxy clients add/remove/rotate` run in another process and replace the file; the
serving process notices within ``TOKENPROXY_CLIENTS_RELOAD_INTERVAL`` seconds (one stat
per look) or at once on SIGHUP, and swaps the registry's keys whole. A file that does
not validate keeps the last good keys in force: one warning line naming the file and the
problem (never a key or digest) and ``tokenproxy_clients_reload_total{outcome="failure"}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from proxy.web.appkeys import CLIENTS, METRICS, SETTINGS
from proxy.web.tasks import cancel_and_wait

_log = structlog.get_logger("tokenproxy")
OUTCOMES = ("success", "failure")


def reload_clients(app: web.Application) -> None:
    """Re-read the clients file if it changed, and say what happened in the log and metrics."""
    registry = app[CLIENTS]
    metrics = app[METRICS]
    result = registry.reload(force=True)
    if result is None:
        return
    if result.ok:
        metrics.child(metrics.clients_reloads, "success").inc()
        metrics.clients_reload_last_success.set(time.time())
        metrics.clients_loaded.set(len(registry))
        _log.info("clients_reloaded", clients=len(registry), path=str(registry.path))
    else:
        metrics.child(metrics.clients_reloads, "failure").inc()
        _log.warning("clients_reload_failed", problem=result.problem, kept=len(registry))


async def follow_clients_file(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: poll the clients file while the app runs (unless the interval is 0)."""
    metrics = app[METRICS]
    for outcome in OUTCOMES:
        # Both series exist from the start, so an alert on increase() sees the first failure.
        metrics.child(metrics.clients_reloads, outcome)
    metrics.clients_reload_last_success.set(time.time())
    metrics.clients_loaded.set(len(app[CLIENTS]))
    interval = app[SETTINGS].clients_reload_interval
    task = asyncio.create_task(_poll(app, interval)) if interval > 0 else None
    yield
    if task is not None:
        await cancel_and_wait(task)


async def _poll(app: web.Application, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        reload_clients(app)
