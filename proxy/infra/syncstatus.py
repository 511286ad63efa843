"""Reconciliation gauges for /metrics, read from the last run the vault records.

`tokenproxy reconcile` runs as its own process (a nightly job); the serving proxy
exports what it found, so one alert rule covers every replica. The row is read in the
background, never per scrape, like the data-key counts.
"""

from __future__ import annotations

import asyncio
import json

from proxy.infra.syncmetrics import FINDINGS, SyncMetrics
from vault import Vault, VaultError
from vault import partner_sync as sync


async def refresh_reconcile_metrics(sync_metrics: SyncMetrics, vault: Vault) -> None:
    """Set the reconcile gauges from the last complete run the vault records."""
    try:
        stored = await sync.sync_backend(vault).sync_state_get(sync.RECONCILE_LAST)
    except VaultError:
        return  # kept as they were: /readyz and tokenproxy_vault_up report the vault
    if stored is None:
        return
    last = json.loads(stored)
    sync_metrics.reconcile_last_run.set(float(last.get("finished_at", 0)))
    for finding in FINDINGS:
        sync_metrics.reconcile_found.labels(finding).set(last.get("found", {}).get(finding, 0))
        sync_metrics.reconcile_fixed.labels(finding).set(last.get("fixed", {}).get(finding, 0))


async def follow_reconcile_status(
    sync_metrics: SyncMetrics, vault: Vault, *, interval: float
) -> None:
    """Refresh the reconcile gauges now and every ``interval`` seconds until cancelled."""
    while True:
        await refresh_reconcile_metrics(sync_metrics, vault)
        await asyncio.sleep(interval)
