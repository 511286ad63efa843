"""Retention sweeps and last-use flushing: the background work of `serve`, and `purge`.

Both are plain functions over ``Services`` (the CLI and tests call them directly);
:func:`background` runs them periodically inside the API app. A sweep also prunes the
audit trail past TOKENPROXY_AUDIT_RETENTION_DAYS, behind a checkpoint event (PCI DSS
10.5.1: at least 12 months kept; the settings refuse less).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta

import structlog
from aiohttp import web

from proxy.core.services import Services, vault_call
from proxy.domain.errors import ProxyError
from proxy.web.appkeys import SERVICES, SETTINGS
from vault.audit import Outcome
from vault.errors import AuditUnavailable
from vault.records import utcnow

_log = structlog.get_logger("tokenproxy.retention")


AUDIT_KIND = "audit_event"


def audit_cutoff(days: int, now: datetime | None = None) -> datetime:
    """Audit events older than this are past a ``days``-day retention."""
    return (now or utcnow()) - timedelta(days=days)


async def purge(
    services: Services, *, dry_run: bool = False, audit_retention_days: int | None = None
) -> dict[str, int]:
    """Delete (or with ``dry_run`` count) every token past retention; counts per kind.

    With ``audit_retention_days``, audit events older than that are pruned too (counted
    as ``audit_event``).
    """
    counts: dict[str, int] = await vault_call(
        services, "purge", services.vault.purge_expired(dry_run=dry_run)
    )
    if audit_retention_days is not None:
        pruned = await vault_call(
            services,
            "audit_prune",
            services.vault.audit.prune(
                audit_cutoff(audit_retention_days),
                actor="tokenproxy:sweeper",
                origin=None,
                dry_run=dry_run,
            ),
        )
        counts[AUDIT_KIND] = pruned.pruned
    if not dry_run:
        for kind, count in counts.items():
            services.metrics.retention_purged.labels(kind).inc(count)
        try:
            await services.vault.audit.append(
                "retention.purge",
                outcome=Outcome.SUCCESS,
                actor="tokenproxy:sweeper",
                origin=None,
                detail=dict(counts),
            )
        except AuditUnavailable:
            # The deletions stand either way; the gap in the trail must be visible.
            services.metrics.audit_failures.labels("retention.purge").inc()
            _log.error("audit_write_failed", event_type="retention.purge")
    _log.info("retention_purge", dry_run=dry_run, **counts)
    return counts


async def flush_usage(services: Services) -> int:
    """Write pending last-use marks in one transaction."""
    written: int = await vault_call(services, "touch", services.vault.flush_usage())
    if written:
        services.metrics.usage_flushes.inc()
    return written


async def _every(seconds: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except ProxyError as exc:
            # The vault is down for a moment: try again next round, never die.
            _log.warning("background_job_failed", job=name, error_code=exc.code)


async def background(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: flush last-use marks, and sweep when TOKENPROXY_PURGE_INTERVAL is set."""
    settings, services = app[SETTINGS], app[SERVICES]
    tasks = [
        asyncio.create_task(
            _every(settings.last_used_flush_interval, lambda: flush_usage(services), "flush")
        )
    ]
    if settings.purge_interval > 0:
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
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with contextlib.suppress(ProxyError):
        await flush_usage(services)
