"""Rate limits shared through PostgreSQL: one budget however many processes decide at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from vault import LocalKekProvider, Vault
from vault.backends.postgres import PostgresBackend
from vault.limits import SharedLimits, shared_limits


@pytest.fixture
async def backends(pg_schema_url: str) -> AsyncIterator[list[PostgresBackend]]:
    """Three backends on one migrated schema, as three replicas hold them."""
    opened = [PostgresBackend(pg_schema_url) for _ in range(3)]
    await opened[0].migrate()
    yield opened
    for backend in opened:
        await backend.close()


async def test_sqlite_vault_shares_no_limits(tmp_path: Path, keyring_path: Path) -> None:
    """A SQLite vault serves one process: its limits stay in that process."""
    vault = await Vault.open(
        f"sqlite:///{tmp_path / 'v.db'}", LocalKekProvider.from_file(keyring_path)
    )
    try:
        assert shared_limits(vault) is None
    finally:
        await vault.close()


@pytest.mark.postgres
async def test_postgres_vault_shares_its_limits(pg_schema_url: str, keyring_path: Path) -> None:
    """A PostgreSQL vault's backend is the shared limits."""
    vault = await Vault.open(pg_schema_url, LocalKekProvider.from_file(keyring_path))
    try:
        assert isinstance(shared_limits(vault), SharedLimits)
    finally:
        await vault.close()


@pytest.mark.postgres
async def test_bucket_allows_its_burst_then_says_when(backends: list[PostgresBackend]) -> None:
    """A burst of 5 at one per minute: five allowed, the sixth waits about a minute."""
    limits = backends[0]
    waits = [await limits.limit_take("pk:a", 60.0, 5) for _ in range(6)]
    assert waits[:5] == [0.0] * 5
    assert 0 < waits[5] <= 60.0
    # Another key has a bucket of its own.
    assert await limits.limit_take("pk:b", 60.0, 5) == 0.0


@pytest.mark.postgres
async def test_concurrent_replicas_share_one_bucket(backends: list[PostgresBackend]) -> None:
    """90 requests racing through three backends get exactly the burst of 20 between them."""
    waits = await asyncio.gather(
        *(backends[i % 3].limit_take("pk:shared", 600.0, 20) for i in range(90))
    )
    assert sum(1 for wait in waits if wait == 0.0) == 20


@pytest.mark.postgres
async def test_a_bucket_refills_at_its_rate(backends: list[PostgresBackend]) -> None:
    """With a 50 ms interval, a spent bucket allows again once its wait has passed."""
    limits = backends[0]
    assert await limits.limit_take("pk:fast", 0.05, 1) == 0.0
    wait = await limits.limit_take("pk:fast", 0.05, 1)
    assert wait > 0
    await asyncio.sleep(wait + 0.05)
    assert await limits.limit_take("pk:fast", 0.05, 1) == 0.0


@pytest.mark.postgres
async def test_failure_windows_are_counted_across_replicas(
    backends: list[PostgresBackend],
) -> None:
    """Failures from three backends add up in one window; blocked keys are listed by prefix."""
    counts = await asyncio.gather(
        *(backends[i % 3].limit_fail("auth:10.0.0.1", 60.0) for i in range(9))
    )
    assert sorted(hits for hits, _ in counts) == list(range(1, 10))
    assert all(0 < remaining <= 60.0 for _, remaining in counts)
    await backends[1].limit_fail("auth:10.0.0.2", 60.0)
    blocked = await backends[2].limit_blocked("auth:", 5)
    assert set(blocked) == {"auth:10.0.0.1"}
    assert await backends[2].limit_blocked("other:", 1) == {}


@pytest.mark.postgres
async def test_an_ended_window_starts_again(backends: list[PostgresBackend]) -> None:
    """A failure after the window ended counts as the first of a new window."""
    limits = backends[0]
    await limits.limit_fail("auth:x", 0.05)
    await limits.limit_fail("auth:x", 0.05)
    await asyncio.sleep(0.1)
    hits, _ = await limits.limit_fail("auth:x", 0.05)
    assert hits == 1


@pytest.mark.postgres
async def test_expired_rows_are_swept(backends: list[PostgresBackend], pg_schema_url: str) -> None:
    """The sweep deletes rows whose time has passed and keeps live ones."""
    limits = backends[0]
    await limits.limit_take("pk:short", 0.01, 1)
    await limits.limit_fail("auth:short", 0.01)
    await limits.limit_take("pk:long", 600.0, 1)
    await asyncio.sleep(0.05)
    assert await limits.limit_sweep() == 2
    conn = await asyncpg.connect(pg_schema_url)
    try:
        keys = [row["key"] for row in await conn.fetch("SELECT key FROM rate_limits")]
    finally:
        await conn.close()
    assert keys == ["pk:long"]
