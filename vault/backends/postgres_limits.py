"""PostgreSQL storage for the rate limits every replica shares (:mod:`vault.limits`).

A mixin of :class:`vault.backends.postgres.PostgresBackend`. Each decision is one
statement on one row, taken on the database's clock (``statement_timestamp()``, fixed for
the whole statement), so replicas whose clocks disagree still share one budget, and two
replicas deciding on one key at once are serialised by the row lock of the upsert, never
by a read followed by a write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

T = TypeVar("T")

_NOW = "extract(epoch FROM statement_timestamp())::float8"
# GCRA, the token bucket as one timestamp per key: $2 is the interval between requests at
# the sustained rate, $3 the burst tolerance (burst x interval). A request is allowed when
# the bucket's theoretical arrival time, pushed one interval on, stays within the burst
# tolerance of now; only then does the time move. EXCLUDED.tat is now + $2.
_ALLOWED = "greatest(r.tat, EXCLUDED.tat - $2) + $2 <= EXCLUDED.tat - $2 + $3"
_TAKE = (
    "INSERT INTO rate_limits AS r (key, tat, hits, allowed, expires_at)"  # noqa: S608 - fixed fragments
    f" VALUES ($1, {_NOW} + $2, 0, true, {_NOW} + $2)"
    " ON CONFLICT (key) DO UPDATE SET"
    f" allowed = {_ALLOWED},"
    f" tat = CASE WHEN {_ALLOWED} THEN greatest(r.tat, EXCLUDED.tat - $2) + $2 ELSE r.tat END,"
    f" expires_at = CASE WHEN {_ALLOWED} THEN greatest(r.tat, EXCLUDED.tat - $2) + $2"
    " ELSE r.expires_at END"
    f" RETURNING allowed, tat + $2 - $3 - {_NOW} AS wait"
)
# A lease of up to $4 requests at once from the same GCRA bucket ($2 interval, $3 burst
# tolerance): as many as the bucket allows now, none of them if it allows none. The count
# granted is kept in ``hits`` (0 for a plain bucket) so that RETURNING can say it: the
# upsert sees the row as another replica's committed lease left it, which a read before
# the statement would not. The epsilon absorbs float rounding in tolerance / interval.
_GRANT = "least($4, floor(({now} + $3 - {base}) / $2 + 1e-9))::int"
_LEASE_NEW = _GRANT.format(now=_NOW, base=_NOW)
_LEASE_MORE = "greatest(0, " + _GRANT.format(now=_NOW, base=f"greatest(r.tat, {_NOW})") + ")"
_LEASE = (
    "INSERT INTO rate_limits AS r (key, tat, hits, allowed, expires_at)"  # noqa: S608 - fixed fragments
    f" VALUES ($1, {_NOW} + {_LEASE_NEW} * $2, {_LEASE_NEW}, true, {_NOW} + {_LEASE_NEW} * $2)"
    " ON CONFLICT (key) DO UPDATE SET"
    f" hits = {_LEASE_MORE},"
    f" allowed = {_LEASE_MORE} > 0,"
    f" tat = greatest(r.tat, {_NOW}) + {_LEASE_MORE} * $2,"
    f" expires_at = greatest(r.tat, {_NOW}) + {_LEASE_MORE} * $2"
    f" RETURNING hits, tat + $2 - $3 - {_NOW} AS wait"
)
# A fixed window per key: $2 is its length. A failure after the window ended starts a new
# one; the answer is the failures counted in the window and the seconds it has left.
_ENDED = "r.expires_at <= EXCLUDED.tat"
_FAIL = (
    "INSERT INTO rate_limits AS r (key, tat, hits, allowed, expires_at)"  # noqa: S608 - fixed fragments
    f" VALUES ($1, {_NOW}, 1, true, {_NOW} + $2)"
    " ON CONFLICT (key) DO UPDATE SET"
    f" hits = CASE WHEN {_ENDED} THEN 1 ELSE r.hits + 1 END,"
    f" tat = CASE WHEN {_ENDED} THEN EXCLUDED.tat ELSE r.tat END,"
    f" expires_at = CASE WHEN {_ENDED} THEN EXCLUDED.expires_at ELSE r.expires_at END"
    f" RETURNING hits, expires_at - {_NOW} AS remaining"
)
_BLOCKED = (
    f"SELECT key, expires_at - {_NOW} AS remaining FROM rate_limits"  # noqa: S608 - fixed fragments
    # "hits > 0" lets the planner use the partial index of failure rows.
    f" WHERE hits > 0 AND hits >= $2 AND starts_with(key, $1) AND expires_at > {_NOW}"
)
_SWEEP = f"DELETE FROM rate_limits WHERE expires_at < {_NOW}"  # noqa: S608 - fixed fragments


class PostgresLimitsMixin:
    """Shared rate-limit rows on PostgreSQL."""

    if TYPE_CHECKING:

        async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T: ...

    async def limit_take(self, key: str, interval: float, burst: int) -> float:
        """Spend one request from ``key``'s bucket: 0.0 if allowed, else seconds until one is."""

        async def run(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(_TAKE, key, interval, burst * interval)

        row = await self._run(run)
        return 0.0 if row["allowed"] else max(float(row["wait"]), 0.001)

    async def limit_lease(
        self, key: str, interval: float, burst: int, count: int
    ) -> tuple[int, float]:
        """Take up to ``count`` requests from ``key``'s bucket at once: how many were
        granted, and when none were, the seconds until one is."""

        async def run(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(_LEASE, key, interval, burst * interval, count)

        row = await self._run(run)
        granted = int(row["hits"])
        return granted, 0.0 if granted else max(float(row["wait"]), 0.001)

    async def limit_fail(self, key: str, window: float) -> tuple[int, float]:
        """Count one failure for ``key``: the failures in its window and the seconds it has left."""

        async def run(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(_FAIL, key, window)

        row = await self._run(run)
        return int(row["hits"]), float(row["remaining"])

    async def limit_blocked(self, prefix: str, limit: int) -> dict[str, float]:
        """Keys under ``prefix`` with at least ``limit`` failures in a live window: seconds left."""

        async def run(conn: asyncpg.Connection) -> list[Any]:
            rows: list[Any] = await conn.fetch(_BLOCKED, prefix, limit)
            return rows

        return {row["key"]: float(row["remaining"]) for row in await self._run(run)}

    async def limit_sweep(self) -> int:
        """Delete the rows whose time has passed; how many went."""

        async def run(conn: asyncpg.Connection) -> str:
            status: str = await conn.execute(_SWEEP)
            return status

        return int((await self._run(run)).split()[-1])
