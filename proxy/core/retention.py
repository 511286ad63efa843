"""Retention sweeps and last-use flushing: the work behind `purge` and `serve`'s background jobs.

Both are plain functions over ``Services`` (the CLI and tests call them directly);
:mod:`proxy.web.background` runs them periodically inside the API app. A sweep also prunes the
audit trail past TOKENPROXY_AUDIT_RETENTION_DAYS, behind a checkpoint event (PCI DSS
10.5.1: at least 12 months kept; the settings refuse less).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from proxy.core.services import Services, vault_call
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
