"""Three proxy processes on one PostgreSQL database share their limits as one service."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe

from proxy.infra.clients import add_client, parse_scopes
from tests.cards import VISA
from tests.test_replicas import REPLICAS, Replica, start_replica, wait_ready

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SHOP = "https://shop.example"
BURST = 10
CARD = {"number": VISA.number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}


@pytest.fixture
def limit_env(
    tmp_path: Path, keyring_path: Path, pg_schema_url: str, localstripe: Localstripe
) -> dict[str, str]:
    """Settings every replica shares: one database, a small publishable burst, no refill to
    speak of, and a small auth-failure limit."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TOKENPROXY_", "STRIPE_"))},
        "TOKENPROXY_VAULT_URL": pg_schema_url,
        "TOKENPROXY_KEYRING": str(keyring_path),
        "TOKENPROXY_CLIENTS": str(tmp_path / "clients.json"),
        "STRIPE_API_KEY": SANDBOX_API_KEY,
        "TOKENPROXY_STRIPE_API_BASE": localstripe.base_url,
        "TOKENPROXY_LOG_LEVEL": "warning",
        "TOKENPROXY_LOG_FORMAT": "json",
        "TOKENPROXY_CORS_ORIGINS": SHOP,
        "TOKENPROXY_PUBLISHABLE_BURST": str(BURST),
        "TOKENPROXY_PUBLISHABLE_RATE_PER_MINUTE": "0.1",
        "TOKENPROXY_AUTH_FAILURE_LIMIT": "5",
        "TOKENPROXY_AUTH_FAILURE_WINDOW": "600",
    }


async def _replicas(
    env: dict[str, str], tmp_path: Path, http: aiohttp.ClientSession
) -> list[Replica]:
    replicas = [start_replica(env, tmp_path / f"replica{i}.log") for i in range(REPLICAS)]
    await asyncio.gather(*(wait_ready(http, r) for r in replicas))
    return replicas


def _stop(replicas: list[Replica]) -> None:
    for replica in replicas:
        replica.process.terminate()
    for replica in replicas:
        replica.process.wait(timeout=30)


async def test_three_replicas_share_one_publishable_budget(
    limit_env: dict[str, str], tmp_path: Path
) -> None:
    """30 browser tokenizations spread over three replicas: exactly the burst of 10 pass."""
    key = add_client(
        Path(limit_env["TOKENPROXY_CLIENTS"]),
        "shop",
        parse_scopes("tokenize"),
        publishable=True,
        origins=frozenset({SHOP}),
    )
    async with aiohttp.ClientSession() as http:
        replicas = await _replicas(limit_env, tmp_path, http)
        try:
            headers = {"Authorization": f"Bearer {key}", "Origin": SHOP}

            async def tokenize(i: int) -> int:
                url = replicas[i % REPLICAS].base + "/v1/cards"
                async with http.post(url, json=CARD, headers=headers) as resp:
                    body = await resp.json()
                    if resp.status == 429:
                        assert body["error"]["code"] == "rate_limited"
                        assert int(resp.headers["Retry-After"]) >= 1
                    return resp.status

            statuses = await asyncio.gather(*(tokenize(i) for i in range(3 * BURST)))
        finally:
            _stop(replicas)
    assert statuses.count(201) == BURST, statuses
    assert statuses.count(429) == 2 * BURST


async def test_failures_at_one_replica_throttle_every_replica(
    limit_env: dict[str, str], tmp_path: Path
) -> None:
    """Six bad keys spread over three replicas pass the limit of five: the source is then
    refused by every replica, a good key included."""
    good = add_client(Path(limit_env["TOKENPROXY_CLIENTS"]), "reader", parse_scopes("read"))
    async with aiohttp.ClientSession() as http:
        replicas = await _replicas(limit_env, tmp_path, http)
        try:
            for i in range(6):
                url = replicas[i % REPLICAS].base + "/v1/tokens/vtok_card_x"
                bad = {"Authorization": f"Bearer tpk_wrong{i}"}
                async with http.get(url, headers=bad) as resp:
                    assert resp.status == 401
            for replica in replicas:
                # Another replica's failures arrive with its next sync of throttled sources.
                deadline = time.monotonic() + 30
                while True:
                    async with http.get(
                        replica.base + "/v1/tokens/vtok_card_x",
                        headers={"Authorization": f"Bearer {good}"},
                    ) as resp:
                        status = resp.status
                        body = await resp.json()
                    if status == 429 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                assert status == 429, body
                assert body["error"]["code"] == "auth_throttled"
        finally:
            _stop(replicas)
