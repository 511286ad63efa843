"""Retention sweeps and last-use flushing: the work behind `purge` and `serve`'s background jobs.

:func:`sweep` is the one purge, over a vault and metrics: `tokenproxy purge` runs it
through :mod:`proxy.core.admin`, and :mod:`proxy.web.background` runs it periodically
inside the API app through :func:`purge` (over ``Services``). A sweep also prunes the
audit trail past TOKENPROXY_AUDIT_RETENTION_DAYS, behind a checkpoint event (PCI DSS
10.5.1: at least 12 months kept; the settings refuse less).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from proxy.core.services import Services, vault_call
from proxy.infra.metrics import Metrics
from vault import Purge, Vault
from vault.audit import Outcome
from vault.errors import AuditUnavailable
from vault.records import utcnow

_log = structlog.get_logger("tokenproxy.retention")


AUDIT_KIND = "audit_event"
# The retention.purge audit detail's count of deleted payment methods still attached at
# the partner (beside the per-kind counts, never one of them).
STILL_ATTACHED = "still_attached"
# Who the background sweep is in the audit trail.
SWEEPER = "tokenproxy:sweeper"


def audit_cutoff(days: int, now: datetime | None = None) -> datetime:
    """Audit events older than this are past a ``days``-day retention."""
    return (now or utcnow()) - timedelta(days=days)


async def sweep(
    vault: Vault,
    metrics: Metrics,
    *,
    dry_run: bool = False,
    audit_retention_days: int | None = None,
    actor: str = SWEEPER,
    origin: str | None = None,
    tolerate_audit_gap: bool = False,
) -> Purge:
    """Delete (or with ``dry_run`` count) every token past the vault's retention; counts
    per kind, and the deleted payment methods that stay attached at the partner.

    With ``audit_retention_days``, audit events older than that are pruned too (counted
    as ``audit_event``). A real run counts what it deleted in ``metrics`` and records
    itself in the audit trail as ``actor``. The deletions stand even when that event
    cannot be written: ``tolerate_audit_gap`` counts and logs the gap (a background
    sweep, which nobody watches fail) instead of raising AuditUnavailable (an operator's
    command). Vault errors propagate as they are.

    Nothing is detached at the partner: a payment method saved on a customer stays
    attached there until the customer is erased, and ``tokenproxy reconcile`` then
    reports it as held by no token. The count of those is kept apart from the per-kind
    counts (which label a metric) and goes to the audit event and a warning.
    """
    purged = await vault.purge_expired(dry_run=dry_run)
    counts = dict(purged.deleted)
    if audit_retention_days is not None:
        pruned = await vault.audit.prune(
            audit_cutoff(audit_retention_days), actor=actor, origin=origin, dry_run=dry_run
        )
        counts[AUDIT_KIND] = pruned.pruned
    if not dry_run:
        for kind, count in counts.items():
            metrics.retention_purged.labels(kind).inc(count)
        if purged.still_attached:
            _log.warning("retention_purge_left_attached", still_attached=purged.still_attached)
        try:
            await vault.audit.append(
                "retention.purge",
                outcome=Outcome.SUCCESS,
                actor=actor,
                origin=origin,
                detail={**counts, STILL_ATTACHED: purged.still_attached},
            )
        except AuditUnavailable:
            if not tolerate_audit_gap:
                raise
            # The deletions stand either way; the gap in the trail must be visible.
            metrics.audit_failures.labels("retention.purge").inc()
            _log.error("audit_write_failed", event_type="retention.purge")
    return Purge(counts, purged.still_attached)


async def purge(
    services: Services, *, dry_run: bool = False, audit_retention_days: int | None = None
) -> Purge:
    """The service's own sweep (see :func:`sweep`), as the background job runs it."""
    purged: Purge = await vault_call(
        services,
        "purge",
        sweep(
            services.vault,
            services.metrics,
            dry_run=dry_run,
            audit_retention_days=audit_retention_days,
            tolerate_audit_gap=True,
        ),
    )
    _log.info(
        "retention_purge", dry_run=dry_run, still_attached=purged.still_attached, **purged.deleted
    )
    return purged


async def flush_usage(services: Services) -> int:
    """Write pending last-use marks in one transaction."""
    written: int = await vault_call(services, "touch", services.vault.flush_usage())
    if written:
        services.metrics.usage_flushes.inc()
    return written
