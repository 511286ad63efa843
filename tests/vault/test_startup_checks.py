"""Start-up work that scales: migrations under their own timeout, key coverage by index probes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.backends import RawRows
from tests.helpers import WAITING_FOR_MY_ADVISORY_LOCK
from tests.resilience.serverproc import ServerProcess
from tests.vault.test_rotation import provider_of, record
from vault import KeyRingError, LocalKekProvider, StorageUnavailable, Vault
from vault.backends.postgres import PostgresBackend
from vault.backends.sql import SQLITE
from vault.rotation import check_key_coverage

_LOCK = "SELECT pg_advisory_lock(hashtext('tokenproxy.migrate.' || current_schema()))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext('tokenproxy.migrate.' || current_schema()))"


async def test_coverage_queries_search_the_index_never_scan(
    tmp_path: Path, keyring_path: Path
) -> None:
    """SQLite's plan for the coverage check's queries on the real schema is an index search."""
    path = tmp_path / "plan.db"
    await (await Vault.open(f"sqlite:///{path}", LocalKekProvider.from_file(keyring_path))).close()
    db = sqlite3.connect(path)
    try:
        for sql, args in ((SQLITE.dek_version_range, ()), (SQLITE.dek_on_version, (2,))):
            plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args)]
            assert any("INDEX deks_kek_version" in step for step in plan), plan
            assert not any(step.startswith("SCAN deks") for step in plan), plan
    finally:
        db.close()


async def test_a_retired_version_between_live_ones_is_found(
    vault: Vault, raw_rows: RawRows
) -> None:
    """Data keys on a retired version between two live ones still stop the start-up check."""
    provider = provider_of(vault)
    provider.rotate()
    provider.rotate()  # versions 1 and 2 decrypt-only, 3 active
    stored = [await vault.put(record(ref=f"pm_mid_{i}")) for i in range(3)]
    await check_key_coverage(vault)
    deks = [(await vault.backend.get_record(s.token)).dek_id for s in stored]  # type: ignore[union-attr]
    await raw_rows.query("UPDATE deks SET kek_version = 1 WHERE dek_id = ?", (deks[0],))
    await raw_rows.query("UPDATE deks SET kek_version = 2 WHERE dek_id = ?", (deks[1],))
    await check_key_coverage(vault)
    provider.retire(2, in_use=0)  # bypassing the count, as a hand-edited ring would
    with pytest.raises(KeyRingError, match="version 2 is retired but still wraps 1"):
        await check_key_coverage(vault)


async def test_an_empty_vault_passes_the_coverage_check(vault: Vault) -> None:
    """No data keys at all: nothing to cover, no error."""
    assert await vault.backend.dek_version_range() is None
    await check_key_coverage(vault)


@pytest.mark.postgres
async def test_migrations_run_under_their_own_timeout(pg_schema_url: str) -> None:
    """A migration waiting longer than the request timeout completes under its own."""
    holder = await asyncpg.connect(pg_schema_url)
    backend = PostgresBackend(pg_schema_url, pool_min=0, pool_max=1, command_timeout=0.2)
    try:
        await holder.execute(_LOCK)
        with pytest.raises(StorageUnavailable):
            await backend.migrate(statement_timeout=0.3)  # another migrator holds the lock too long
        waiting = asyncio.create_task(backend.migrate(statement_timeout=60))
        await asyncio.sleep(1.0)  # well past the 0.2 s request timeout
        assert not waiting.done()
        await holder.execute(_UNLOCK)
        assert await waiting >= 1
    finally:
        await backend.close()
        await holder.close()


@pytest.mark.postgres
async def test_migrate_command_outlasts_the_request_timeout(
    pg_schema_url: str, keyring_path: Path, tmp_path: Path
) -> None:
    """`tokenproxy migrate` (the migration Job) waits out a held lock under its own timeout."""
    holder = await asyncpg.connect(pg_schema_url)
    env = {
        **os.environ,
        "TOKENPROXY_VAULT_URL": pg_schema_url,
        "TOKENPROXY_KEYRING": str(keyring_path),
        "TOKENPROXY_CLIENTS": str(tmp_path / "clients.json"),
        "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1",
        "TOKENPROXY_DB_TIMEOUT": "0.2",
        "TOKENPROXY_MIGRATE_TIMEOUT": "60",
    }
    job: asyncio.subprocess.Process | None = None
    try:
        await holder.execute(_LOCK)
        job = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "migrate",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(600):  # until the command waits on the lock
            if await holder.fetchval(WAITING_FOR_MY_ADVISORY_LOCK):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # well past the 0.2 s request timeout
        assert job.returncode is None
        await holder.execute(_UNLOCK)
        _, err = await asyncio.wait_for(job.communicate(), timeout=60)
        assert job.returncode == 0, err.decode()
        assert await holder.fetchval("SELECT count(*) FROM schema_migrations") >= 1
    finally:
        if job is not None and job.returncode is None:
            job.kill()
            await job.wait()
        await holder.close()


async def test_servers_without_migrate_on_start_wait_for_the_migration_job(
    tmp_path: Path,
) -> None:
    """With TOKENPROXY_MIGRATE_ON_START=false a fresh vault stops serve with one line naming
    `tokenproxy migrate`; once that has run, serve starts without migrating."""
    server = ServerProcess(
        tmp_path / "srv", "http://127.0.0.1:1", TOKENPROXY_MIGRATE_ON_START="false"
    )
    env = {**server.env, "TOKENPROXY_LISTEN": "127.0.0.1:0", "TOKENPROXY_OPS_LISTEN": "127.0.0.1:0"}
    refused = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", env=env, stderr=subprocess.PIPE
    )
    _, err = await asyncio.wait_for(refused.communicate(), timeout=60)
    assert refused.returncode != 0
    assert "tokenproxy migrate" in err.decode()
    job = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "migrate", env=env, stderr=subprocess.PIPE
    )
    _, err = await asyncio.wait_for(job.communicate(), timeout=60)
    assert job.returncode == 0, err.decode()
    await server.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(server.ops + "/readyz") as resp:
            assert resp.status == 200
    finally:
        server.terminate()
        assert await server.wait() == 0
