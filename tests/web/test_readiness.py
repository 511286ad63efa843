"""/readyz from a result kept in the background: a busy pool or an outage never empties it."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from proxy.infra.metrics import Metrics
from proxy.web.appkeys import SERVICES
from proxy.web.readiness import READINESS, Readiness
from tests.conftest import RunningProxy
from vault import Vault


async def readyz(proxy: RunningProxy) -> tuple[int, dict[str, Any]]:
    """Status and body of /readyz, as the kubelet sees it (no check forced)."""
    async with proxy.http.get(proxy.ops + "/readyz") as resp:
        return resp.status, await resp.json()


async def test_starting_and_stopping_are_not_ready(vault: Vault) -> None:
    """Before its first check and once draining, a pod answers 503; in between 200."""
    metrics = Metrics()
    readiness = Readiness(metrics, timeout=5.0)
    assert readiness.answer().http_status == 503
    assert readiness.answer().body == {"status": "starting"}
    async with readiness.probing(vault, source="test ring"):
        assert (readiness.answer().http_status, readiness.answer().body) == (
            200,
            {"status": "ready"},
        )
        assert metrics.ready._value.get() == 1
        readiness.stopping()
        assert (readiness.answer().http_status, readiness.answer().body) == (
            503,
            {"status": "stopping"},
        )
    assert metrics.ready._value.get() == 0


async def test_a_closed_vault_is_degraded_not_unready(vault: Vault) -> None:
    """A vault that cannot be reached leaves the pod ready, reporting why, with vault_up 0."""
    metrics = Metrics()
    readiness = Readiness(metrics, timeout=5.0)
    async with readiness.probing(vault, source="test ring"):
        await vault.backend.close()
        await readiness.probe()
        answer = readiness.answer()
        assert (answer.http_status, answer.body) == (
            200,
            {"status": "degraded", "reason": "vault_unavailable"},
        )
        assert metrics.vault_up._value.get() == 0


@pytest.fixture
def pg_proxy_env() -> dict[str, str]:
    """For the `pg_proxy` fixture: a pool of one connection and a short wait for it."""
    return {
        "TOKENPROXY_DB_POOL_MIN": "1",
        "TOKENPROXY_DB_POOL_MAX": "1",
        "TOKENPROXY_DB_TIMEOUT": "0.5",
    }


@pytest.mark.postgres
async def test_a_saturated_pool_keeps_the_pod_ready(pg_proxy: RunningProxy) -> None:
    """While every pooled connection is busy, /readyz keeps answering 200 without waiting."""
    proxy = pg_proxy
    assert await readyz(proxy) == (200, {"status": "ready"})
    backend = proxy.app[SERVICES].vault.backend
    pool: asyncpg.Pool = await backend._get_pool()
    async with pool.acquire():
        # The background check waits for a connection, times out, and says so; the probe
        # answers from that result every time and is never refused.
        seen: list[tuple[int, dict[str, Any]]] = []
        for _ in range(200):
            seen.append(await readyz(proxy))
            if seen[-1][1]["status"] == "degraded":
                break
            await asyncio.sleep(0.05)
        assert seen[-1] == (200, {"status": "degraded", "reason": "vault_unavailable"})
        assert all(status == 200 for status, _ in seen)
    await proxy.app[READINESS].probe()
    assert await readyz(proxy) == (200, {"status": "ready"})
