"""Start-up of the limits replicas share: the publishable-key buckets, the auth throttle and
the outbound partner budget.

With a backend that shares limits (PostgreSQL), all three move into the database when the
vault has opened; a loop then refreshes the throttle's local copy of throttled sources
every second and sweeps expired rows every minute. With SQLite nothing changes: the
in-memory limiters decide, as one process needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from proxy.partners.resilience import ResilientPartner
from proxy.web import authguard, publishable
from proxy.web.appkeys import SERVICES
from vault.errors import StorageUnavailable
from vault.limits import SharedLimits, shared_limits

_log = structlog.get_logger("tokenproxy")
SYNC_SECONDS = 1.0
SWEEP_SECONDS = 60.0


async def share_limits(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context, after the vault opened: share the limits while the app runs."""
    limits = shared_limits(app[SERVICES].vault) if SERVICES in app else None
    if limits is None:
        yield
        return
    bucket, throttle = app[publishable.SHARED], app[authguard.SHARED_THROTTLE]
    bucket.limits = throttle.limits = limits
    partner = app[SERVICES].partner
    budget = partner.budget if isinstance(partner, ResilientPartner) else None
    if budget is not None:
        budget.source = BudgetRows(limits)
    task = asyncio.create_task(_maintain(throttle, limits))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        bucket.limits = throttle.limits = None
        if budget is not None:
            budget.source = None


class BudgetRows:
    """The outbound budget's bucket as a row of the shared ``rate_limits`` table."""

    def __init__(self, limits: SharedLimits) -> None:
        self.limits = limits

    async def lease(
        self, key: str, interval: float, burst: int, count: int
    ) -> tuple[int, float] | None:
        """Up to ``count`` calls from the shared bucket; None while the database is down."""
        try:
            return await self.limits.limit_lease(key, interval, burst, count)
        except StorageUnavailable:
            _log.warning("partner_budget_unshared")
            return None


async def _maintain(throttle: authguard.SharedThrottle, limits: SharedLimits) -> None:
    ticks = 0
    while True:
        await asyncio.sleep(SYNC_SECONDS)
        ticks += 1
        try:
            await throttle.sync()
            if ticks * SYNC_SECONDS >= SWEEP_SECONDS:
                ticks = 0
                swept = await limits.limit_sweep()
                if swept:
                    _log.debug("rate_limits_swept", count=swept)
        except StorageUnavailable:
            # The in-memory throttle keeps counting meanwhile (see SharedThrottle).
            _log.warning("rate_limits_unavailable")
