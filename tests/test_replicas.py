"""Three proxy processes on one PostgreSQL database behave as one service."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe, free_port

from tests.faultproxy import FaultProxy
from vault import IdempotencyStore, LocalKekProvider, Vault

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPLICAS = 3
TOKENIZATIONS = 2000
CONCURRENCY = 48
CUSTOMERS = 40
# Idempotency-Keys each sent once to every replica at the same moment.
IDEMPOTENT_KEYS = 60
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
async def partner_gate(tmp_path: Path) -> AsyncIterator[FaultProxy]:
    """A fresh localstripe behind a proxy that honours Idempotency-Key as Stripe does.

    localstripe ignores the header; the proxy also records every payment method the
    partner really created, by partner idempotency key, so the test can count them.
    """
    sandbox = Localstripe(log=tmp_path / "localstripe.log")
    gate = await FaultProxy(sandbox.base_url, stripe_idempotency=True).start()
    yield gate
    await gate.close()
    sandbox.stop()


@pytest.fixture
def replica_env(
    tmp_path: Path,
    keyring_path: Path,
    client_keys: dict[str, str],
    pg_schema_url: str,
    partner_gate: FaultProxy,
) -> dict[str, str]:
    """Settings every replica shares: one database, key ring, clients file, partner."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TOKENPROXY_", "STRIPE_"))},
        "TOKENPROXY_VAULT_URL": pg_schema_url,
        "TOKENPROXY_KEYRING": str(keyring_path),
        "TOKENPROXY_CLIENTS": str(tmp_path / "clients.json"),
        "STRIPE_API_KEY": SANDBOX_API_KEY,
        "TOKENPROXY_STRIPE_API_BASE": partner_gate.base_url,
        "TOKENPROXY_LOG_LEVEL": "warning",
        "TOKENPROXY_LOG_FORMAT": "json",
        "TOKENPROXY_DB_POOL_MAX": "8",
    }


async def test_three_replicas_share_one_vault(
    replica_env: dict[str, str],
    client_keys: dict[str, str],
    tmp_path: Path,
    keyring_path: Path,
    partner_gate: FaultProxy,
) -> None:
    """2,000 tokenizations over 3 processes read back through another, no duplicates, one chain.

    Alongside, each of 60 Idempotency-Keys goes to all three replicas at once: one token
    per key, and the partner creates exactly one payment method for it.
    """
    pg_schema_url = replica_env["TOKENPROXY_VAULT_URL"]
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
                # A customer's cards differ in expiry: the same card saved twice on one
                # customer answers its existing token (docs/stripe.md).
                body: dict[str, object] = {
                    "number": "4242424242424242",
                    "exp_month": 12,
                    "exp_year": 2030 + (i // 4) // CUSTOMERS,
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

            async def tokenize_once(k: int, replica: Replica) -> str:
                """POST with Idempotency-Key ``idem-k`` until it is answered (409 means wait)."""
                headers = {**checkout, "Idempotency-Key": f"idem-{k}"}
                body = {**card(1), "metadata": {"idem": str(k)}}
                while True:
                    async with (
                        gate,
                        http.post(replica.base + "/v1/cards", json=body, headers=headers) as resp,
                    ):
                        answer = await resp.json()
                        if resp.status == 409:
                            assert answer["error"]["code"] == "idempotency_key_in_use"
                        else:
                            assert resp.status == 201, answer
                            token: str = answer["token"]
                            return token
                    await asyncio.sleep(0.05)

            plain = asyncio.gather(*(tokenize(i) for i in range(TOKENIZATIONS)))
            repeated = asyncio.gather(
                *(tokenize_once(k, r) for k in range(IDEMPOTENT_KEYS) for r in replicas)
            )
            created, idem_tokens = await asyncio.gather(plain, repeated)
            tokens = [token for _, token in created]
            assert len(set(tokens)) == TOKENIZATIONS
            by_key = [
                set(idem_tokens[k * REPLICAS : (k + 1) * REPLICAS]) for k in range(IDEMPOTENT_KEYS)
            ]
            assert all(len(answers) == 1 for answers in by_key), by_key
            idem_token = [answers.pop() for answers in by_key]
            assert not set(idem_token) & set(tokens)

            # The same key with another body is refused by every replica, not run again.
            for replica in replicas:
                headers = {**checkout, "Idempotency-Key": "idem-0"}
                async with http.post(
                    replica.base + "/v1/cards", json=card(2), headers=headers
                ) as resp:
                    assert resp.status == 422, await resp.text()
                    assert (await resp.json())["error"]["code"] == "idempotency_key_reused"

            async def reference_of(token: str) -> str:
                async with (
                    gate,
                    http.get(replicas[0].base + f"/v1/tokens/{token}", headers=billing) as resp,
                ):
                    body = await resp.json()
                    assert resp.status == 200, body
                    reference: str = body["partner_reference"]
                    return reference

            idem_references = await asyncio.gather(*(reference_of(t) for t in idem_token))

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
            assert not set(references) & set(idem_references)
    finally:
        for replica in replicas:
            replica.process.terminate()
        for replica in replicas:
            try:
                replica.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()

    # What the partner really created: one payment method per plain tokenization (each
    # under its own per-request key) and exactly one per client Idempotency-Key, the one
    # the vault holds.
    created_at_partner = partner_gate.created
    assert all(len(pms) == 1 for pms in created_at_partner.values())
    assert len(created_at_partner) == TOKENIZATIONS + IDEMPOTENT_KEYS
    vault = await Vault.open(pg_schema_url, LocalKekProvider.from_file(keyring_path))
    try:
        store = IdempotencyStore(vault)
        for k, reference in enumerate(idem_references):
            assert created_at_partner[store.partner_key("checkout", f"idem-{k}")] == {reference}
    finally:
        await vault.close()

    conn = await asyncpg.connect(pg_schema_url)
    try:
        records = await conn.fetchval("SELECT count(*) FROM records")
        assert records == TOKENIZATIONS + IDEMPOTENT_KEYS
        customer_keys = await conn.fetchval(
            "SELECT count(*) FROM deks WHERE customer_idx IS NOT NULL"
        )
        customers = len({(i // 4) % CUSTOMERS for i in range(0, TOKENIZATIONS, 4)})
        assert customer_keys == customers == CUSTOMERS
        own_keys = await conn.fetchval("SELECT count(*) FROM deks WHERE customer_idx IS NULL")
        assert own_keys == TOKENIZATIONS - TOKENIZATIONS // 4 + IDEMPOTENT_KEYS
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
    assert len(resolves) == TOKENIZATIONS + IDEMPOTENT_KEYS
    assert report.events >= TOKENIZATIONS


async def _audit_types(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch("SELECT event_type FROM audit_events")]
    finally:
        await conn.close()
