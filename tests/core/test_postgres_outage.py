"""A PostgreSQL outage under a running proxy: fail fast, spare the partner, recover alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from tokenproxy_sandbox.launcher import Localstripe

from proxy.web.readiness import READINESS
from tests.conftest import make_settings, running_proxy
from tests.ibans import VALID
from tests.partner_tap import PartnerTap
from tests.tcpgate import TcpGate

pytestmark = pytest.mark.postgres

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
# Far above how long a refused connection takes: a request slower than this did not fail fast.
DB_TIMEOUT = 10.0


@dataclass
class GatedProxy:
    """A proxy whose database connections go through a gate the test can cut."""

    base: str
    ops: str
    gate: TcpGate
    tap: PartnerTap
    keys: dict[str, str]
    http: aiohttp.ClientSession
    app: web.Application

    async def call(
        self, method: str, path: str, client: str, json: object = None
    ) -> tuple[int, dict[str, object], float]:
        """Send one API request; returns status, JSON body and seconds taken."""
        started = time.perf_counter()
        headers = {"Authorization": f"Bearer {self.keys[client]}"}
        async with self.http.request(method, self.base + path, headers=headers, json=json) as r:
            body = await r.json()
            return r.status, body, time.perf_counter() - started

    async def metrics(self) -> str:
        """The ops listener's /metrics."""
        async with self.http.get(self.ops + "/metrics") as r:
            return await r.text()

    async def ready(self) -> tuple[int, dict[str, object]]:
        """Status and body of /readyz, after a readiness check made now."""
        await self.app[READINESS].probe()
        async with self.http.get(self.ops + "/readyz") as r:
            return r.status, await r.json()


@pytest.fixture
async def gated_proxy(
    tmp_path: Path,
    keyring_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
    pg_schema_url: str,
) -> AsyncIterator[GatedProxy]:
    """The full proxy on PostgreSQL through a TCP gate, with a counting tap before localstripe."""
    gate = TcpGate("127.0.0.1", 5432)
    await gate.open()
    tap = PartnerTap(localstripe.base_url)
    await tap.start()
    settings = make_settings(
        tmp_path,
        keyring_path,
        tap.base_url,
        {
            "TOKENPROXY_VAULT_URL": pg_schema_url.replace(
                "127.0.0.1:5432", f"127.0.0.1:{gate.port}"
            ),
            "TOKENPROXY_DB_POOL_MIN": "2",
            "TOKENPROXY_DB_POOL_MAX": "4",
            "TOKENPROXY_DB_TIMEOUT": str(DB_TIMEOUT),
        },
    )
    try:
        async with running_proxy(tmp_path, client_keys, settings) as running:
            yield GatedProxy(
                base=running.base,
                ops=running.ops,
                gate=gate,
                tap=tap,
                keys=running.keys,
                http=running.http,
                app=running.app,
            )
    finally:
        await tap.stop()
        await gate.cut()


def partner_creates(tap: PartnerTap) -> int:
    """How many payment methods the proxy asked the partner to create."""
    return sum(1 for call in tap.calls if call == ("POST", "/v1/payment_methods"))


async def test_outage_fails_fast_spares_partner_and_recovers(gated_proxy: GatedProxy) -> None:
    """Database cut: 503 vault_unavailable at once, no partner call, still ready; then recovery."""
    p = gated_proxy
    status, before, _ = await p.call("POST", "/v1/cards", "checkout", CARD)
    assert status == 201
    assert await p.ready() == (200, {"status": "ready"})
    assert partner_creates(p.tap) == 1

    await p.gate.cut()
    await asyncio.sleep(0.05)  # the pool sees its connections reset

    # First tokenization after the cut, before any /readyz probe: already refused up front.
    for _ in range(5):
        status, body, took = await p.call("POST", "/v1/cards", "checkout", CARD)
        assert status == 503
        assert body["error"]["code"] == "vault_unavailable"  # type: ignore[index]
        assert took < DB_TIMEOUT / 2
    assert partner_creates(p.tap) == 1

    status, body, took = await p.call("GET", f"/v1/tokens/{before['token']}", "billing")
    assert status == 503
    # A resolve is refused when its audit event cannot be written (fails closed) or the
    # record cannot be read, whichever the database outage hits first.
    assert body["error"]["code"] in {"vault_unavailable", "audit_unavailable"}  # type: ignore[index]
    assert took < DB_TIMEOUT / 2
    # Every pod sees the same outage: staying in the Service, they answer 503 themselves
    # instead of leaving callers with refused connections.
    assert await p.ready() == (200, {"status": "degraded", "reason": "vault_unavailable"})
    assert "tokenproxy_vault_up 0.0" in await p.metrics()

    await p.gate.open()
    for _ in range(100):  # the vault is seen again by itself, without a restart
        if await p.ready() == (200, {"status": "ready"}):
            break
        await asyncio.sleep(0.05)
    assert await p.ready() == (200, {"status": "ready"})
    assert "tokenproxy_vault_up 1.0" in await p.metrics()
    status, body, _ = await p.call("GET", f"/v1/tokens/{before['token']}", "billing")
    assert status == 200
    assert body["token"] == before["token"]
    status, _, _ = await p.call("POST", "/v1/cards", "checkout", CARD)
    assert status == 201
    assert partner_creates(p.tap) == 2


async def test_tokenizing_recovers_without_a_readiness_probe(gated_proxy: GatedProxy) -> None:
    """After a failed read, tokenizing is refused before the partner, then resumes by itself."""
    p = gated_proxy
    assert (await p.call("POST", "/v1/cards", "checkout", CARD))[0] == 201
    await p.gate.cut()
    status, _, _ = await p.call("GET", "/v1/tokens/vtok_card_" + "A" * 32, "billing")
    assert status == 503
    status, body, _ = await p.call("POST", "/v1/cards", "checkout", CARD)
    assert (status, body["error"]["code"]) == (503, "vault_unavailable")  # type: ignore[index]
    assert partner_creates(p.tap) == 1
    await p.gate.open()
    # No readiness probe in between: the tokenization itself re-checks and goes through.
    status, _, _ = await p.call("POST", "/v1/cards", "checkout", CARD)
    assert status == 201
    assert partner_creates(p.tap) == 2


async def test_every_partner_create_is_refused_while_the_vault_is_down(
    gated_proxy: GatedProxy,
) -> None:
    """Known outage: idempotent cards and bank accounts are refused before the partner too."""
    p = gated_proxy
    await p.gate.cut()
    status, _, _ = await p.call("GET", "/v1/tokens/vtok_card_" + "A" * 32, "billing")
    assert status == 503
    headers = {"Authorization": f"Bearer {p.keys['checkout']}", "Idempotency-Key": "outage-1"}
    async with p.http.post(p.base + "/v1/cards", json=CARD, headers=headers) as r:
        assert (r.status, (await r.json())["error"]["code"]) == (503, "vault_unavailable")
    bank = {"iban": VALID[0].iban, "holder_name": "Jane Doe"}
    status, body, _ = await p.call("POST", "/v1/bank-accounts", "checkout", bank)
    assert (status, body["error"]["code"]) == (503, "vault_unavailable")  # type: ignore[index]
    assert partner_creates(p.tap) == 0

    await p.gate.open()
    async with p.http.post(p.base + "/v1/cards", json=CARD, headers=headers) as r:
        assert r.status == 201, await r.text()
    status, body, _ = await p.call("POST", "/v1/bank-accounts", "checkout", bank)
    assert status == 201, body
    assert partner_creates(p.tap) == 2
