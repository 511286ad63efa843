"""Key-lifecycle gauges for /metrics: data keys per KEK version and rewrap backlog."""

from __future__ import annotations

import time

from proxy.infra.metrics import Metrics
from vault import Vault, VaultError
from vault.rotation import key_status

# A scrape every 15 s would otherwise run a GROUP BY over the data keys each time; a few
# seconds of staleness is nothing next to a rewrap that takes minutes.
KEY_METRICS_MAX_AGE = 5.0


async def refresh_key_metrics(
    metrics: Metrics, vault: Vault, *, max_age: float = KEY_METRICS_MAX_AGE
) -> None:
    """Update tokenproxy_deks{key_version} and tokenproxy_rewrap_remaining if stale."""
    now = time.monotonic()
    if now - metrics.key_metrics_at < max_age:
        return
    metrics.key_metrics_at = now
    await vault.refresh_keys()  # so the backlog is measured against the newest active version
    try:
        status = await key_status(vault)
    except VaultError:
        # A scrape must not fail because the vault hiccuped; readyz reports that.
        return
    active = vault.keys.active_version
    metrics.deks.clear()
    for version in status:
        metrics.deks.labels(str(version.version)).set(version.deks)
    metrics.rewrap_remaining.set(sum(v.in_use for v in status if v.version != active))
