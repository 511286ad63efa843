"""PostgreSQL-only behaviour: durability setting, concurrent migrations, indexes, outages."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from tokenproxy_sandbox.launcher import free_port

from proxy.cli.main import main as cli_main
from tests.backends import with_query
from tests.tcpgate import TcpGate
from vault import LocalKekProvider, StorageUnavailable, Vault
from vault.backends.postgres import PostgresBackend, session_settings
from vault.backends.sqlite import migration_scripts

pytestmark = pytest.mark.postgres


def test_sessions_never_run_with_synchronous_commit_off() -> None:
    """A URL asking for synchronous_commit=off gets 'on'; stronger levels are kept."""
    assert session_settings("postgresql://h/db?synchronous_commit=off") == {
        "synchronous_commit": "on"
    }
    assert session_settings("postgresql://h/db") == {"synchronous_commit": "on"}
    assert session_settings("postgresql://h/db?synchronous_commit=remote_apply") == {
        "synchronous_commit": "remote_apply"
    }


async def test_commits_wait_for_the_wal_flush(pg_schema_url: str) -> None:
    """Even with the database defaulting to off, the backend's sessions commit synchronously."""
    backend = PostgresBackend(with_query(pg_schema_url, synchronous_commit="off"))
    try:
        await backend.migrate()
        pool = await backend._get_pool()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await backend.close()


async def test_concurrent_migrations_apply_each_version_once(pg_schema_url: str) -> None:
    """Five processes' worth of backends migrating at once agree on one schema version."""
    backends = [PostgresBackend(pg_schema_url, pool_min=0, pool_max=1) for _ in range(5)]
    try:
        versions = await asyncio.gather(*(b.migrate() for b in backends))
        assert len(set(versions)) == 1
        assert versions[0] >= 1
        conn = await asyncpg.connect(pg_schema_url)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        finally:
            await conn.close()
        # Every shipped version once (numbers may skip: they are handed out per feature).
        shipped = [version for version, _ in migration_scripts("postgres")]
        assert [r[0] for r in rows] == shipped
        assert versions[0] == shipped[-1]
    finally:
        for b in backends:
            await b.close()


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM records WHERE token = 'x'",
        "SELECT * FROM deks WHERE dek_id = 'x'",
        "SELECT * FROM deks WHERE customer_idx = 'x'",
        "SELECT * FROM records WHERE fingerprint_idx = 'x'",
        "SELECT * FROM records WHERE customer_idx = 'x' ORDER BY created_at",
    ],
)
async def test_request_path_lookups_use_an_index(pg_schema_url: str, query: str) -> None:
    """Token reads and blind-index lookups are index scans, never sequential scans."""
    backend = PostgresBackend(pg_schema_url)
    try:
        await backend.migrate()
        pool = await backend._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            # With sequential scans priced out, only a missing index leaves a Seq Scan.
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + query))
    finally:
        await backend.close()
    assert "Seq Scan" not in plan
    assert "Index" in plan


async def test_unreachable_database_is_storage_unavailable_in_our_words() -> None:
    """A closed port gives StorageUnavailable with our message, and the backend turns unhealthy."""
    port = free_port()
    backend = PostgresBackend(f"postgresql://postgres@127.0.0.1:{port}/test", connect_timeout=2)
    try:
        with pytest.raises(StorageUnavailable) as info:
            await backend.get_record("vtok_card_x")
        assert str(info.value) == "PostgreSQL unavailable (ConnectionRefusedError)"
        assert info.value.__cause__ is None
        assert backend.healthy is False
        with pytest.raises(StorageUnavailable):
            await backend.ping()
    finally:
        await backend.close()


async def test_backend_recovers_when_the_database_returns(
    pg_schema_url: str, keyring_path: Path
) -> None:
    """Cut mid-run: connection loss marks the backend unhealthy; reads fail; then recover alone."""
    gate = TcpGate("127.0.0.1", 5432)
    await gate.open()
    url = pg_schema_url.replace("127.0.0.1:5432", f"127.0.0.1:{gate.port}")
    backend = PostgresBackend(url, pool_min=2, pool_max=4, command_timeout=5)
    try:
        await backend.migrate()
        assert backend.healthy is True
        await gate.cut()
        for _ in range(50):  # the pooled connections notice the reset on the next loop turns
            if not backend.healthy:
                break
            await asyncio.sleep(0.01)
        assert backend.healthy is False
        with pytest.raises(StorageUnavailable):
            await backend.get_record("vtok_card_x")
        await gate.open()
        await backend.ping()
        assert backend.healthy is True
        assert await backend.get_record("vtok_card_x") is None
    finally:
        await backend.close()
        await gate.cut()


async def test_closed_backend_refuses_work(pg_schema_url: str) -> None:
    """After close, operations raise StorageUnavailable instead of reopening a pool."""
    backend = PostgresBackend(pg_schema_url)
    await backend.migrate()
    await backend.close()
    await backend.close()
    with pytest.raises(StorageUnavailable):
        await backend.get_record("vtok_card_x")


def test_cli_migrate_on_postgres(
    pg_schema_url: str,
    keyring_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tokenproxy migrate` brings a PostgreSQL schema to the latest version and says so."""
    monkeypatch.setenv("TOKENPROXY_VAULT_URL", pg_schema_url)
    monkeypatch.setenv("TOKENPROXY_KEYRING", str(keyring_path))
    assert cli_main(["migrate"]) == 0
    assert "vault schema at version" in capsys.readouterr().out
    assert cli_main(["migrate"]) == 0


async def test_vault_open_passes_pool_settings(pg_schema_url: str, keyring_path: Path) -> None:
    """Vault.open sizes the pool from its arguments (min connections opened up front)."""
    keys = LocalKekProvider.from_file(keyring_path)
    vault = await Vault.open(pg_schema_url, keys, pool_min=3, pool_max=5)
    try:
        pool = await vault.backend._get_pool()  # type: ignore[attr-defined]
        assert pool.get_min_size() == 3
        assert pool.get_max_size() == 5
        assert pool.get_size() >= 3
    finally:
        await vault.close()
