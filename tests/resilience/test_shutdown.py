"""Shutdown: a grace that outlasts any partner call, and SIGTERM during start-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from proxy.infra.settings import Settings, SettingsError
from tests.faultproxy import Fault, FaultProxy
from tests.helpers import WAITING_FOR_MY_ADVISORY_LOCK
from tests.proxy.test_cards_api import card_body
from tests.resilience.serverproc import ServerProcess

_BASE = {"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1"}


def test_grace_is_derived_from_the_partner_and_database_timeouts() -> None:
    """Unset, the grace covers the retry budget, one more attempt, and two database writes."""
    default = Settings.from_env(_BASE)
    assert default.shutdown_grace == 20 + 10 + 2 * 5
    tuned = Settings.from_env(
        {
            **_BASE,
            "TOKENPROXY_PARTNER_TIMEOUT": "15",
            "TOKENPROXY_PARTNER_RETRY_BUDGET": "30",
            "TOKENPROXY_DB_TIMEOUT": "2",
        }
    )
    assert tuned.shutdown_grace == 30 + 15 + 2 * 2
    no_retries = Settings.from_env({**_BASE, "TOKENPROXY_PARTNER_MAX_RETRIES": "0"})
    assert no_retries.shutdown_grace == 10 + 2 * 5


def test_a_grace_shorter_than_a_partner_call_is_refused() -> None:
    """TOKENPROXY_SHUTDOWN_GRACE=10 with a 10 s timeout and a 20 s budget would orphan calls."""
    with pytest.raises(SettingsError, match=r"TOKENPROXY_SHUTDOWN_GRACE must be at least 40\b"):
        Settings.from_env({**_BASE, "TOKENPROXY_SHUTDOWN_GRACE": "10"})
    longer = Settings.from_env({**_BASE, "TOKENPROXY_SHUTDOWN_GRACE": "90"})
    assert longer.shutdown_grace == 90


async def test_sigterm_during_a_retried_partner_call_still_completes_it(
    tmp_path: Path, faults: FaultProxy
) -> None:
    """SIGTERM while the partner hangs: unready at once, the retry still runs, 201, exit 0."""
    server = ServerProcess(tmp_path / "srv", faults.base_url)
    await server.start()
    # The first attempt hangs until TOKENPROXY_PARTNER_TIMEOUT (3 s here); the retry is slow.
    faults.script(Fault.hang(), Fault.latency(1.0))
    async with aiohttp.ClientSession() as http:

        async def tokenize() -> tuple[int, dict[str, object]]:
            async with http.post(
                server.base + "/v1/cards",
                json=card_body(),
                headers={**server.auth("checkout"), "Idempotency-Key": "term-retry"},
            ) as resp:
                return resp.status, await resp.json()

        in_flight = asyncio.create_task(tokenize())
        await faults.arrived.wait()
        server.terminate()
        # Out of the Service while it drains: the ops listener says so until the end.
        readiness = None
        for _ in range(200):
            async with http.get(server.ops + "/readyz") as resp:
                readiness = resp.status, await resp.json()
            if readiness[0] == 503:
                break
            await asyncio.sleep(0.02)
        assert readiness == (503, {"status": "stopping"})
        assert not in_flight.done()
        status, body = await in_flight
    assert status == 201, body
    assert str(body["token"]).startswith("vtok_card_")
    assert len(faults.payment_method_posts()) == 2  # the retry ran after the SIGTERM
    assert await server.wait() == 0


async def _waiting_for_advisory_lock(conn: asyncpg.Connection, within: float = 30.0) -> None:
    """Return once another session waits for the advisory lock ``conn`` holds (the migration's)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        waiting = await conn.fetchval(WAITING_FOR_MY_ADVISORY_LOCK)
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the proxy never waited for the migration lock")


@pytest.mark.postgres
async def test_sigterm_during_migrations_stops_the_process(
    tmp_path: Path, pg_schema_url: str, faults: FaultProxy
) -> None:
    """SIGTERM while start-up waits on the migration lock stops the process, cleanly, at once."""
    holder = await asyncpg.connect(pg_schema_url)
    try:
        # Another migrator holds the schema's migration lock, as a long migration would.
        await holder.execute(
            "SELECT pg_advisory_lock(hashtext('tokenproxy.migrate.' || current_schema()))"
        )
        server = ServerProcess(
            tmp_path / "srv",
            faults.base_url,
            TOKENPROXY_VAULT_URL=pg_schema_url,
            TOKENPROXY_MIGRATE_TIMEOUT="3600",
        )
        server.launch()
        await _waiting_for_advisory_lock(holder)
        server.terminate()
        # The lock is still held: only the signal can have ended the wait.
        assert await server.wait() == 0
        assert await holder.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await holder.close()
    log = server.log.read_text()
    assert '"during":"start-up"' in log
    assert '"event":"stopped"' in log
    assert '"event":"started"' not in log
