"""The outbound budget: partner calls a second, shared by every replica of one deployment.

Stripe limits an account to 100 operations a second in live mode and 25 in a sandbox,
and each endpoint to 25 a second unless its page says otherwise
(https://docs.stripe.com/rate-limits). A 429 is answered with backoff, but a fleet that
meets the limiter on every burst spends its retries there and slows the billing service,
which uses the same account. The budget keeps the proxy's own calls under a rate it is
given (``TOKENPROXY_PARTNER_RATE``) before they leave.

The bucket is a GCRA token bucket, one per partner account and mode. With a source
that shares it (PostgreSQL's ``rate_limits`` table, see :mod:`vault.limits`) every
replica spends from the same bucket; without one (SQLite: one process) the bucket lives
in this process. To keep the database off the hot path a process leases several
requests per round trip and spends them locally; a lease lives at most ``lease_ttl``
seconds (a quarter second), so a process cannot hoard budget and release it later in
one burst, and its
size adapts: it doubles while leases are spent in time and halves when one expires, so
a quiet replica does not take budget it will not use.

A call that finds no budget waits for it up to ``max_wait`` seconds, then fails with
``503 partner_budget_exhausted`` and a Retry-After: retryable by the client, and never
sent to the partner.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from proxy.domain.errors import PartnerUnavailable

MAX_LEASE = 16


class BudgetSource(Protocol):
    """Where a budget shared between processes is kept (the vault's database)."""

    async def lease(
        self, key: str, interval: float, burst: int, count: int
    ) -> tuple[int, float] | None:
        """Up to ``count`` requests from ``key``'s bucket: how many were granted, and when
        none were, the seconds until one is; None when the source cannot be reached."""
        ...


class LocalBucket:
    """The same GCRA bucket in this process's memory (one process, or the database is down)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat = 0.0

    def lease(self, interval: float, burst: int, count: int) -> tuple[int, float]:
        """As :meth:`BudgetSource.lease`, for this process alone."""
        now = self._clock()
        base = max(self._tat, now)
        granted = max(0, min(count, math.floor((now + burst * interval - base) / interval + 1e-9)))
        if granted:
            self._tat = base + granted * interval
            return granted, 0.0
        return 0, max(base + interval - burst * interval - now, 0.001)


class OutboundBudget:
    """Partner calls a second for one partner account, shared when a source is set."""

    def __init__(
        self,
        rate: float,
        *,
        key: str,
        burst: int | None = None,
        max_wait: float = 1.0,
        lease_ttl: float = 0.25,
        max_lease: int = MAX_LEASE,
        processes: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.key = key
        self.interval = 1.0 / rate
        # A quarter second's worth. In any one second the calls sent are at most those
        # granted in that second and the lease's life before it: burst + rate x (1 +
        # lease_ttl), 1.5x the rate at these defaults.
        self.burst = burst if burst is not None else max(1, math.ceil(rate / 4))
        self.max_wait = max_wait
        self.lease_ttl = lease_ttl
        self.max_lease = max(1, min(max_lease, self.burst))
        # Set at start-up when the vault's backend shares limits (PostgreSQL).
        self.source: BudgetSource | None = None
        self._local = LocalBucket(clock)
        # Without a shared source, each of ``processes`` workers keeps its share.
        self._local_interval = self.interval * processes
        self._local_burst = max(1, self.burst // processes)
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._tokens = 0
        self._expires = 0.0
        self._lease_size = 1
        # Round trips to the shared source, for the cost figure in docs/stripe.md.
        self.leases = 0

    async def take(self) -> None:
        """Spend one request, waiting up to ``max_wait``; 503 ``partner_budget_exhausted`` after."""
        deadline = self._clock() + self.max_wait
        while True:
            if self._spend():
                return
            async with self._lock:
                if self._spend():  # another caller leased meanwhile
                    return
                wait = await self._refill()
            if wait == 0.0:
                continue
            if self._clock() + wait > deadline:
                raise PartnerUnavailable(
                    "The proxy's budget of partner calls is spent for now; retry shortly.",
                    code="partner_budget_exhausted",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            await self._sleep(wait)

    def _spend(self) -> bool:
        if self._tokens > 0 and self._clock() < self._expires:
            self._tokens -= 1
            return True
        return False

    async def _refill(self) -> float:
        """Lease more requests; 0.0 when some were granted, else the wait for one."""
        if self._tokens > 0:  # the last lease expired unspent: ask for less
            self._lease_size = max(1, self._lease_size // 2)
        elif self._expires:  # spent in time: ask for more
            self._lease_size = min(self.max_lease, self._lease_size * 2)
        count = self._lease_size
        granted, wait = await self._lease(count)
        if granted:
            self._tokens = granted
            self._expires = self._clock() + self.lease_ttl
            return 0.0
        self._tokens, self._expires = 0, 0.0
        self._lease_size = 1
        return wait

    async def _lease(self, count: int) -> tuple[int, float]:
        if self.source is not None:
            self.leases += 1
            shared = await self.source.lease(self.key, self.interval, self.burst, count)
            if shared is not None:
                return shared
            # The database is unreachable: spend from this process's bucket meanwhile
            # (the vault calls of the same request fail on their own).
        return self._local.lease(self._local_interval, self._local_burst, count)
