"""Reconciliation gauges for /metrics, read from the last run the vault records.

`tokenproxy reconcile` runs as its own process (a nightly job); the serving proxy
exports what it found, so one alert rule covers every replica.
"""

from __future__ import annotations

import json
import time

from proxy.infra.syncmetrics import FINDINGS, SyncMetrics
from vault import Vault, VaultError
from vault import partner_sync as sync

# A scrape reads one small row; a few seconds of staleness is nothing next to a nightly job.
MAX_AGE = 5.0


async def refresh_reconcile_metrics(sync_metrics: SyncMetrics, vault: Vault) -> None:
    """Set the reconcile gauges from the last complete run the vault records."""
    now = time.monotonic()
    if now - sync_metrics.read_at < MAX_AGE:
        return
    sync_metrics.read_at = now
    try:
        stored = await sync.sync_backend(vault).sync_state_get(sync.RECONCILE_LAST)
    except VaultError:
        return  # a scrape must not fail because the vault hiccuped; readyz reports that
    if stored is None:
        return
    last = json.loads(stored)
    sync_metrics.reconcile_last_run.set(float(last.get("finished_at", 0)))
    for finding in FINDINGS:
        sync_metrics.reconcile_found.labels(finding).set(last.get("found", {}).get(finding, 0))
        sync_metrics.reconcile_fixed.labels(finding).set(last.get("fixed", {}).get(finding, 0))
