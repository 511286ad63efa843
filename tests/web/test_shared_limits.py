"""The shared limiters: their database decides, its copy of throttled sources, and fallback."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.web.authguard import FailureThrottle, SharedThrottle
from proxy.web.publishable import SharedBucket, TokenBucketLimiter
from vault.backends.postgres import PostgresBackend

LIMIT = 3


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def shared(pg_schema_url: str) -> AsyncIterator[PostgresBackend]:
    """A migrated PostgreSQL backend: the limits replicas share."""
    backend = PostgresBackend(pg_schema_url)
    await backend.migrate()
    yield backend
    await backend.close()


@pytest.fixture
async def unreachable() -> AsyncIterator[PostgresBackend]:
    """A PostgreSQL backend whose server does not answer (nothing listens on port 1)."""
    backend = PostgresBackend("postgresql://127.0.0.1:1/none", connect_timeout=0.5)
    yield backend
    await backend.close()


def _throttle(clock: Clock) -> SharedThrottle:
    local = FailureThrottle(LIMIT, 60.0, max_sources=100, clock=clock)
    return SharedThrottle(LIMIT, 60.0, local, max_sources=100, clock=clock)


@pytest.mark.postgres
async def test_shared_throttle_counts_in_the_database(shared: PostgresBackend) -> None:
    """Failures counted by one replica throttle the source at another after its sync."""
    one, other = _throttle(Clock()), _throttle(Clock())
    one.limits = other.limits = shared
    for _ in range(LIMIT):
        assert one.retry_after("10.0.0.1") == 0.0
        await one.failed("10.0.0.1")
    assert one.retry_after("10.0.0.1") > 0
    assert other.retry_after("10.0.0.1") == 0.0
    await other.sync()
    assert 0 < other.retry_after("10.0.0.1") <= 60.0
    assert other.retry_after("10.0.0.2") == 0.0
    # Nothing was counted in memory: the database holds the count.
    assert len(one.fallback) == 0


@pytest.mark.postgres
async def test_a_throttled_source_is_forgiven_when_its_window_ends(
    shared: PostgresBackend,
) -> None:
    """The local copy of a block ends with the window the database reported."""
    clock = Clock()
    throttle = _throttle(clock)
    throttle.limits = shared
    for _ in range(LIMIT):
        await throttle.failed("10.0.0.9")
    assert throttle.retry_after("10.0.0.9") > 0
    clock.now += 61.0
    assert throttle.retry_after("10.0.0.9") == 0.0


async def test_throttle_falls_back_to_memory_without_the_database(
    unreachable: PostgresBackend,
) -> None:
    """With the database down, failures are counted in memory and still throttle."""
    throttle = _throttle(Clock())
    throttle.limits = unreachable
    for _ in range(LIMIT):
        await throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") > 0
    assert len(throttle.fallback) == 1


async def test_bucket_falls_back_to_memory_without_the_database(
    unreachable: PostgresBackend,
) -> None:
    """With the database down, the in-memory bucket still holds the key to its burst."""
    bucket = SharedBucket(1 / 60, 2, TokenBucketLimiter(1 / 60, 2, clock=Clock()))
    bucket.limits = unreachable
    waits = [await bucket.take(("d" * 64, "10.0.0.1")) for _ in range(3)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] > 0


@pytest.mark.postgres
# The schema is shared by the examples on purpose (each uses a fresh key): migrating a
# schema per example would cost more than the property.
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(burst=st.integers(min_value=1, max_value=8), extra=st.integers(min_value=1, max_value=8))
async def test_shared_bucket_never_allows_more_than_its_burst(
    pg_schema_url: str, burst: int, extra: int
) -> None:
    """However many requests come at once, a bucket with no time to refill allows its burst."""
    backend = PostgresBackend(pg_schema_url)
    try:
        await backend.migrate()
        bucket = SharedBucket(1 / 3600, burst, TokenBucketLimiter(1, 1))
        bucket.limits = backend
        # A fresh key per example: hypothesis may run the same values twice.
        key = (secrets.token_hex(32), "10.0.0.1")
        waits = [await bucket.take(key) for _ in range(burst + extra)]
    finally:
        await backend.close()
    assert waits.count(0.0) == burst
    assert all(wait > 0 for wait in waits[burst:])
