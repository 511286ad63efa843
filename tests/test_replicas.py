"""Three proxy processes on one PostgreSQL database behave as one service."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from proxy.sandbox import SANDBOX_API_KEY, Localstripe, free_port
from vault import LocalKekProvider, Vault

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPLICAS = 3
TOKENIZATIONS = 2000
CONCURRENCY = 48
CUSTOMERS = 40
START_TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Replica:
    """One `python -m proxy serve` process."""

    base: str
    ops: str
    process: subprocess.Popen[bytes]


def start_replica(env: dict[str, str], log: Path) -> Replica:
    """Start a proxy process on free ports with the shared settings ``env``."""
    listen, ops = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve"],
            env={**env, "TOKENPROXY_LISTEN": listen, "TOKENPROXY_OPS_LISTEN": ops},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    return Replica(f"http://{listen}", f"http://{ops}", process)


async def wait_ready(http: aiohttp.ClientSession, replica: Replica) -> None:
    """Poll /readyz until the replica answers 200 (or fail if it exits or takes too long)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            pytest.fail(f"replica exited with {replica.process.returncode}")
        try:
            async with http.get(replica.ops + "/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail("replica did not become ready")


@pytest.fixture
def replica_env(
    tmp_path: Path, keyring_path: Path, client_keys: dict[str, str], pg_schema_url: str
) -> Iterator[dict[str, str]]:
    """Settings every replica shares: one database, key ring, clients file; a fresh localstripe."""
    sandbox = Localstripe(log=tmp_path / "localstripe.log")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TOKENPROXY_", "STRIPE_"))},
        "TOKENPROXY_VAULT_URL": pg_schema_url,
        "TOKENPROXY_KEYRING": str(keyring_path),
        "TOKENPROXY_CLIENTS": str(tmp_path / "clients.json"),
        "STRIPE_API_KEY": SANDBOX_API_KEY,
        "TOKENPROXY_STRIPE_API_BASE": sandbox.base_url,
        "TOKENPROXY_LOG_LEVEL": "warning",
        "TOKENPROXY_LOG_FORMAT": "json",
        "TOKENPROXY_DB_POOL_MAX": "8",
    }
    yield env
    sandbox.stop()


async def test_three_replicas_share_one_vault(
    replica_env: dict[str, str],
    client_keys: dict[str, str],
    tmp_path: Path,
    pg_schema_url: str,
    keyring_path: Path,
) -> None:
    """2,000 tokenizations over 3 processes read back through another, no duplicates, one chain.

    Idempotency keys (issue 5's branch) had not landed when this was written; repeated
    keys sent to different replicas belong here once they have.
    """
    # All three start (and migrate) at once: the advisory lock keeps that safe.
    replicas = [start_replica(replica_env, tmp_path / f"replica{i}.log") for i in range(REPLICAS)]
    try:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as http:
            await asyncio.gather(*(wait_ready(http, r) for r in replicas))
            checkout = {"Authorization": f"Bearer {client_keys['checkout']}"}
            billing = {"Authorization": f"Bearer {client_keys['billing']}"}
            gate = asyncio.Semaphore(CONCURRENCY)

            def card(i: int) -> dict[str, object]:
                body: dict[str, object] = {
                    "number": "4242424242424242",
                    "exp_month": 12,
                    "exp_year": 2030,
                    "cvc": "123",
                    "metadata": {"n": str(i)},
                }
                if i % 4 == 0:
                    # Customers spread over all replicas race to create the customer's key.
                    body["customer_ref"] = f"cus-{(i // 4) % CUSTOMERS}"
                return body

            async def tokenize(i: int) -> tuple[int, str]:
                async with gate:
                    url = replicas[i % REPLICAS].base + "/v1/cards"
                    async with http.post(url, json=card(i), headers=checkout) as resp:
                        body = await resp.json()
                        assert resp.status == 201, body
                        return i, body["token"]

            created = await asyncio.gather(*(tokenize(i) for i in range(TOKENIZATIONS)))
            tokens = [token for _, token in created]
            assert len(set(tokens)) == TOKENIZATIONS

            async def resolve(i: int, token: str) -> str:
                async with gate:
                    # Read through the next replica: never the one that created the token.
                    url = replicas[(i + 1) % REPLICAS].base + f"/v1/tokens/{token}"
                    async with http.get(url, headers=billing) as resp:
                        body = await resp.json()
                        assert resp.status == 200, body
                        assert body["token"] == token
                        assert body["metadata"] == {"n": str(i)}
                        expected = f"cus-{(i // 4) % CUSTOMERS}" if i % 4 == 0 else None
                        assert body["customer_ref"] == expected
                        reference: str = body["partner_reference"]
                        return reference

            references = await asyncio.gather(*(resolve(i, t) for i, t in created))
            assert len(set(references)) == TOKENIZATIONS
    finally:
        for replica in replicas:
            replica.process.terminate()
        for replica in replicas:
            try:
                replica.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()

    conn = await asyncpg.connect(pg_schema_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM records") == TOKENIZATIONS
        customer_keys = await conn.fetchval(
            "SELECT count(*) FROM deks WHERE customer_idx IS NOT NULL"
        )
        customers = len({(i // 4) % CUSTOMERS for i in range(0, TOKENIZATIONS, 4)})
        assert customer_keys == customers == CUSTOMERS
        own_keys = await conn.fetchval("SELECT count(*) FROM deks WHERE customer_idx IS NULL")
        assert own_keys == TOKENIZATIONS - TOKENIZATIONS // 4
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 1
    finally:
        await conn.close()
    for replica in replicas:
        assert replica.process.returncode == 0

    # Every resolve appended an audit event from one of three processes: one valid chain.
    vault = await Vault.open(pg_schema_url, LocalKekProvider.from_file(keyring_path))
    try:
        report = await vault.audit.verify()
    finally:
        await vault.close()
    assert report.ok, report.first_break
    resolves = [e for e in await _audit_types(pg_schema_url) if e == "token.resolve"]
    assert len(resolves) == TOKENIZATIONS
    assert report.events >= TOKENIZATIONS


async def _audit_types(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch("SELECT event_type FROM audit_events")]
    finally:
        await conn.close()
