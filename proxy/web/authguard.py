"""Failed authentications: throttled per source address, audited in bounded batches.

Client keys are 256-bit random, so guessing is hopeless; what a flood of bad keys can
do is burn CPU and fill the append-only audit trail, one row per refusal, forever.
Two bounds stop that:

- **Throttle.** A source address (an IPv6 source by its /64, which one host usually
  holds whole) that fails authentication ``TOKENPROXY_AUTH_FAILURE_LIMIT`` times within
  ``TOKENPROXY_AUTH_FAILURE_WINDOW`` seconds gets ``429`` with ``Retry-After`` on every
  authenticated route until the window ends, before its key is even looked at, so a
  guess inside the window cannot succeed either. Only unauthenticated failures count
  (a missing or unknown key): a known client lacking a scope is named in the trail
  already. The table is an LRU capped at ``TOKENPROXY_AUTH_FAILURE_MAX_SOURCES``: a
  flood from many addresses evicts the oldest entries instead of growing memory. With
  the PostgreSQL backend the failures are counted in the database instead, so every
  replica adds to one count (:class:`SharedThrottle`); with SQLite (one process) the
  table is in memory. The source is the client's address as ``proxy.web.clientaddr``
  finds it (behind a trusted reverse proxy, the address it forwards; else the TCP peer).
- **Aggregated audit events.** Refusals are tallied per (source, client) and written as
  one ``auth.failure`` event per tally every ``TOKENPROXY_AUTH_FAILURE_AUDIT_INTERVAL``
  seconds, with counts per reason, so a flood costs a bounded number of rows. Sources
  beyond the cap in one interval share one overflow event (origin ``null``). The last
  tallies are written at shutdown before the vault closes; a tally that cannot be
  written is kept for the next flush.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from proxy.core.audit import append_event
from proxy.domain.errors import RateLimited
from proxy.web.appkeys import METRICS, SERVICES, SETTINGS
from proxy.web.clientaddr import client_address
from proxy.web.tasks import cancel_and_wait
from vault.audit import EventType, Outcome
from vault.errors import AuditUnavailable, StorageUnavailable
from vault.limits import SharedLimits
from vault.records import iso, utcnow

_log = structlog.get_logger("tokenproxy.authguard")

# Refusals of callers we could not identify: these are what a key-guesser produces.
_ANONYMOUS_REASONS = frozenset({"missing_key", "invalid_key"})
THROTTLED = "throttled"


def source_of(request: web.Request) -> str:
    """The throttling and audit key for ``request``'s client: its address, an IPv6 one by /64."""
    return source_key(client_address(request))


# Called on every authenticated request with an address already parsed once (the peer or
# a trusted hop): the same few come back, so the parse is cached.
@functools.lru_cache(maxsize=4096)
def source_key(remote: str) -> str:
    """The throttling and audit key for a client address: an IPv6 one by its /64."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:64] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureThrottle:
    """Failures per source in fixed windows, in an LRU table of bounded size."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_sources: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or max_sources < 1:
            raise ValueError("limit, window and max_sources must be positive")
        self.limit = limit
        self.window = window
        self.max_sources = max_sources
        self._clock = clock
        # source -> (window start, failures in that window)
        self._table: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after(self, source: str) -> float:
        """0.0 when ``source`` may try to authenticate, else seconds until it may again."""
        entry = self._table.get(source)
        if entry is None:
            return 0.0
        start, failures = entry
        remaining = start + self.window - self._clock()
        if remaining <= 0:
            del self._table[source]
            return 0.0
        return remaining if failures >= self.limit else 0.0

    def failed(self, source: str) -> None:
        """Count one failed authentication from ``source``."""
        now = self._clock()
        start, failures = self._table.pop(source, (now, 0))
        if now - start >= self.window:
            start, failures = now, 0
        self._table[source] = (start, failures + 1)
        while len(self._table) > self.max_sources:
            # Forgetting a source forgives it early; bounded memory matters more, and the
            # least recently failing source is the one closest to being forgiven anyway.
            self._table.popitem(last=False)

    def __len__(self) -> int:
        return len(self._table)


class SharedThrottle:
    """Failures per source counted in the vault's database, one count for every replica.

    Counting a failure is one statement, which also answers whether the source is now
    throttled. The check before every authentication reads a local copy of the throttled
    sources instead of the database: this process's own failures update it at once, and
    :meth:`sync` (every second while serving) brings in those counted by other replicas.
    So a source throttled anywhere is refused everywhere within a second, and requests
    that carry a good key cost no database round trip.

    Inactive (``limits`` None) until start-up finds a backend that shares limits; then,
    should the database not answer, the in-memory throttle counts (and is consulted too),
    so the throttle never lapses.
    """

    PREFIX = "auth:"

    def __init__(
        self,
        limit: int,
        window: float,
        fallback: FailureThrottle,
        *,
        max_sources: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.fallback = fallback
        self.max_sources = max_sources
        self.limits: SharedLimits | None = None
        self._clock = clock
        self._blocked: dict[str, float] = {}  # source -> when its block ends (clock time)

    def retry_after(self, source: str) -> float:
        """0.0 when ``source`` may try to authenticate, else seconds until it may again."""
        local = self.fallback.retry_after(source)
        until = self._blocked.get(source)
        if until is None:
            return local
        remaining = until - self._clock()
        if remaining <= 0:
            del self._blocked[source]
            return local
        return max(remaining, local)

    async def failed(self, source: str) -> None:
        """Count one failed authentication from ``source`` (in the database when shared)."""
        if self.limits is None:
            self.fallback.failed(source)
            return
        try:
            hits, remaining = await self.limits.limit_fail(self.PREFIX + source, self.window)
        except StorageUnavailable:
            self.fallback.failed(source)
            return
        if hits >= self.limit and len(self._blocked) < self.max_sources:
            self._blocked[source] = self._clock() + remaining

    async def sync(self) -> None:
        """Replace the local copy of throttled sources with the database's."""
        if self.limits is None:
            return
        blocked = await self.limits.limit_blocked(self.PREFIX, self.limit)
        now = self._clock()
        # Bounded as the in-memory table is: a flood from many addresses costs no more.
        self._blocked = {
            key.removeprefix(self.PREFIX): now + remaining
            for key, remaining in list(blocked.items())[: self.max_sources]
        }


@dataclass(slots=True)
class Tally:
    """Refusals of one (source, client) in the current interval."""

    first_at: str
    last_at: str
    reasons: dict[str, int] = field(default_factory=dict)
    routes: set[str] = field(default_factory=set)
    sources: int = 1

    def add(self, reason: str, route: str, at: str, count: int = 1) -> None:
        """Count ``count`` refusals for ``reason`` on ``route``."""
        self.reasons[reason] = self.reasons.get(reason, 0) + count
        self.routes.add(route)
        self.last_at = max(self.last_at, at)

    def merge(self, other: Tally) -> None:
        """Fold ``other`` (an unwritten earlier tally of the same key) into this one."""
        for reason, count in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count
        self.routes |= other.routes
        self.first_at = min(self.first_at, other.first_at)
        self.last_at = max(self.last_at, other.last_at)

    def detail(self) -> dict[str, str | int | bool | None]:
        """The audit event's detail: counts per reason, the time span, the route(s)."""
        detail: dict[str, str | int | bool | None] = {
            "count": sum(self.reasons.values()),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "route": next(iter(self.routes)) if len(self.routes) == 1 else "several",
        }
        detail.update(sorted(self.reasons.items()))
        return detail


# (source, client name); (None, None) is the overflow tally.
TallyKey = tuple[str | None, str | None]


class FailureTallies:
    """Refusals awaiting their aggregated audit events, at most ``max_keys`` of them."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._tallies: dict[TallyKey, Tally] = {}
        self._overflow_sources: set[TallyKey] = set()

    def add(self, source: str, actor: str | None, reason: str, route: str) -> None:
        """Count one refusal."""
        at = iso(utcnow())
        key: TallyKey = (source, actor)
        tally = self._tallies.get(key)
        if tally is None:
            if len(self._tallies) >= self.max_keys:
                self._add_overflow(key, reason, route, at)
                return
            tally = self._tallies[key] = Tally(first_at=at, last_at=at)
        tally.add(reason, route, at)

    def _add_overflow(self, key: TallyKey, reason: str, route: str, at: str) -> None:
        overflow = self._tallies.get((None, None))
        if overflow is None:
            overflow = self._tallies[(None, None)] = Tally(first_at=at, last_at=at, sources=0)
        overflow.add(reason, route, at)
        # Counting distinct overflowing sources would need memory per source: bounded
        # here to the cap, beyond which the count is a lower bound.
        if key not in self._overflow_sources and len(self._overflow_sources) < self.max_keys:
            self._overflow_sources.add(key)
            overflow.sources += 1

    def take(self) -> dict[TallyKey, Tally]:
        """Everything counted so far; the table starts empty again."""
        taken, self._tallies = self._tallies, {}
        self._overflow_sources = set()
        return taken

    def restore(self, unwritten: dict[TallyKey, Tally]) -> None:
        """Put back tallies whose events could not be written, so none is lost."""
        for key, tally in unwritten.items():
            current = self._tallies.get(key)
            if current is None:
                self._tallies[key] = tally
            else:
                current.merge(tally)

    def __len__(self) -> int:
        return len(self._tallies)


THROTTLE = web.AppKey("auth_failure_throttle", FailureThrottle)
SHARED_THROTTLE = web.AppKey("shared_auth_failure_throttle", SharedThrottle)
TALLIES = web.AppKey("auth_failure_tallies", FailureTallies)


def install(app: web.Application) -> None:
    """Give ``app`` its throttle and tally table, sized from its settings."""
    settings = app[SETTINGS]
    app[THROTTLE] = FailureThrottle(
        settings.auth_failure_limit,
        settings.auth_failure_window,
        max_sources=settings.auth_failure_max_sources,
    )
    app[SHARED_THROTTLE] = SharedThrottle(
        settings.auth_failure_limit,
        settings.auth_failure_window,
        app[THROTTLE],
        max_sources=settings.auth_failure_max_sources,
    )
    app[TALLIES] = FailureTallies(settings.auth_failure_max_sources)


def check(request: web.Request) -> None:
    """429 with Retry-After when ``request``'s source is throttled (counted and tallied)."""
    throttle = request.app.get(SHARED_THROTTLE)
    if throttle is None:
        return
    source = source_of(request)
    wait = throttle.retry_after(source)
    if wait <= 0:
        return
    request.app[METRICS].auth_throttled.inc()
    _tally(request, source, THROTTLED, None)
    raise RateLimited(
        "Too many failed authentications from this address; retry later.",
        code="auth_throttled",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )


async def failed(request: web.Request, reason: str, actor: str | None = None) -> None:
    """Record a refused authentication: counted for the throttle, tallied for the audit."""
    source = source_of(request)
    _tally(request, source, reason, actor)
    throttle = request.app.get(SHARED_THROTTLE)
    if throttle is not None and reason in _ANONYMOUS_REASONS:
        await throttle.failed(source)


def _tally(request: web.Request, source: str, reason: str, actor: str | None) -> None:
    tallies = request.app.get(TALLIES)
    if tallies is None:
        return
    resource = request.match_info.route.resource
    tallies.add(source, actor, reason, resource.canonical if resource is not None else "unmatched")


async def flush(app: web.Application) -> int:
    """Write one ``auth.failure`` event per tally; returns how many were written.

    Tallies whose event cannot be written go back into the table for the next flush.
    """
    tallies = app.get(TALLIES)
    if tallies is None or not len(tallies) or SERVICES not in app:
        return 0
    vault = app[SERVICES].vault
    taken = tallies.take()
    unwritten: dict[TallyKey, Tally] = {}
    written = 0
    for key, tally in taken.items():
        source, actor = key
        detail = tally.detail()
        if key == (None, None):
            detail["sources"] = tally.sources
        try:
            await append_event(
                vault,
                EventType.AUTH_FAILURE,
                outcome=Outcome.FAILURE,
                actor=actor,
                origin=source,
                detail=detail,
            )
        except AuditUnavailable:
            app[METRICS].audit_failures.labels(EventType.AUTH_FAILURE).inc()
            unwritten[key] = tally
        else:
            written += 1
    if unwritten:
        _log.error("audit_write_failed", event_type=str(EventType.AUTH_FAILURE))
        tallies.restore(unwritten)
    return written


async def background(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: flush every interval; at shutdown, a last flush before the vault closes."""
    interval = app[SETTINGS].auth_failure_audit_interval

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            await flush(app)

    task = asyncio.create_task(loop())
    yield
    await cancel_and_wait(task)
    await flush(app)
