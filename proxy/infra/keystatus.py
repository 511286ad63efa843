"""Vault gauges for /metrics: data keys per KEK version, rewrap backlog, key age, pool use.

The data-key counts are a GROUP BY over every data key: run per scrape, their cost would
grow with the vault and multiply by replicas and Prometheus servers. They are refreshed
in the background every TOKENPROXY_KEY_STATUS_INTERVAL seconds instead, and a scrape
reads the last values; a minute of staleness is nothing next to a rewrap that takes
hours. The active key's age and the pool's use are read from memory at each scrape.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

import structlog

from proxy.infra.metrics import Metrics
from vault import Vault, VaultError
from vault.rotation import key_status

_log = structlog.get_logger("tokenproxy.keystatus")


async def refresh_key_metrics(metrics: Metrics, vault: Vault) -> None:
    """Update tokenproxy_deks{key_version} and tokenproxy_rewrap_remaining from the vault."""
    await vault.refresh_keys()  # so the backlog is measured against the newest active version
    try:
        status = await key_status(vault)
    except VaultError:
        # Kept as they were: /readyz and tokenproxy_vault_up report the vault's state.
        _log.warning("key_status_refresh_failed")
        return
    active = vault.keys.active_version
    metrics.deks.clear()
    for version in status:
        metrics.deks.labels(str(version.version)).set(version.deks)
    metrics.rewrap_remaining.set(sum(v.in_use for v in status if v.version != active))


def active_key_age(vault: Vault) -> float:
    """Seconds since the active key-encryption key was created (0 if the provider lists none)."""
    for info in vault.keys.versions():
        if info.version == vault.keys.active_version:
            return max(0.0, time.time() - info.created_at.timestamp())
    return 0.0


@runtime_checkable
class _Pooled(Protocol):
    def pool_usage(self) -> tuple[int, int] | None: ...


def observe_scrape(metrics: Metrics, vault: Vault) -> None:
    """Set the gauges a scrape reads from memory: active key age and pool use (no query)."""
    metrics.key_active_age.set(active_key_age(vault))
    backend = vault.backend
    usage = backend.pool_usage() if isinstance(backend, _Pooled) else None
    if usage is not None:
        in_use, size = usage
        metrics.db_pool.labels("in_use").set(in_use)
        metrics.db_pool.labels("size").set(size)


async def follow_key_status(metrics: Metrics, vault: Vault, *, interval: float) -> None:
    """Refresh the key gauges now and every ``interval`` seconds until cancelled."""
    while True:
        await refresh_key_metrics(metrics, vault)
        await asyncio.sleep(interval)
