"""The API app's background jobs: last-use flushing and, when configured, retention sweeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from proxy.core.retention import flush_usage, purge
from proxy.domain.errors import ProxyError
from proxy.web.appkeys import SERVICES, SETTINGS
from proxy.web.tasks import cancel_and_wait

_log = structlog.get_logger("tokenproxy.retention")


async def _every(seconds: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except ProxyError as exc:
            # The vault is down for a moment: try again next round, never die.
            _log.warning("background_job_failed", job=name, error_code=exc.code)


async def retention_jobs(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: flush last-use marks, and sweep when TOKENPROXY_PURGE_INTERVAL is set."""
    settings, services = app[SETTINGS], app[SERVICES]
    tasks = [
        asyncio.create_task(
            _every(settings.last_used_flush_interval, lambda: flush_usage(services), "flush")
        )
    ]
    # The sweep runs once per deployment: in one worker of several (Settings.singleton_jobs).
    if settings.purge_interval > 0 and settings.singleton_jobs:
        tasks.append(
            asyncio.create_task(
                _every(
                    settings.purge_interval,
                    lambda: purge(services, audit_retention_days=settings.audit_retention_days),
                    "purge",
                )
            )
        )
    yield
    await cancel_and_wait(*tasks)
    with contextlib.suppress(ProxyError):
        await flush_usage(services)
