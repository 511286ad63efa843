"""Publishable keys: public ``pk_…`` keys a checkout page may carry, held on a short leash.

A publishable key is in every shopper's browser, so it proves nothing about who calls.
What keeps it from being useful to anyone else:

- it holds only the ``tokenize`` scope (``proxy.infra.clients`` refuses anything more);
- it is bound to origins: the request's ``Origin`` must be one of the key's origins and in
  ``TOKENPROXY_CORS_ORIGINS``. A browser sets ``Origin`` itself and page scripts cannot
  change it, so another site cannot use the key from a shopper's browser. (A script
  outside a browser can send any header; that is what the rate limit is for.)
- it is rate-limited per key and client address (``proxy.web.clientaddr``: the shopper's,
  behind a trusted ingress) with a token bucket: in memory, or with the PostgreSQL backend
  in the database, so every replica spends from one bucket (:class:`SharedBucket`; one
  statement per request).

The hosted card fields (``/elements/card``) are served by the proxy, so their requests
carry the proxy's own origin. For those, the embedding checkout page's origin is taken
from ``TokenProxy-Checkout-Origin``: the frame only runs inside pages that
``frame-ancestors`` allows, and it hands the token back with ``postMessage`` to exactly
that origin, so a page that names another origin than its own receives nothing.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from urllib.parse import urlsplit

from aiohttp import web

from proxy.domain.errors import PermissionDenied, RateLimited
from proxy.domain.origins import OriginError, parse_origin
from proxy.infra.clients import Client
from proxy.web.appkeys import METRICS, SETTINGS
from proxy.web.clientaddr import client_address
from vault.errors import StorageUnavailable
from vault.limits import SharedLimits

CHECKOUT_ORIGIN_HEADER = "TokenProxy-Checkout-Origin"


class TokenBucketLimiter:
    """Token buckets keyed by anything hashable, bounded in number (least recently used go)."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        max_buckets: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_second <= 0 or burst < 1 or max_buckets < 1:
            raise ValueError("rate, burst and max_buckets must be positive")
        self.rate = rate_per_second
        self.burst = float(burst)
        self.max_buckets = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def take(self, key: Hashable) -> float:
        """Spend one token from ``key``'s bucket: 0.0 if allowed, else seconds until one is due."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        if tokens >= 1.0:
            self._store(key, tokens - 1.0, now)
            return 0.0
        self._store(key, tokens, now)
        return (1.0 - tokens) / self.rate

    def _store(self, key: Hashable, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        # Evicting a bucket only forgets spending; with a bound on memory, the least
        # recently used are the ones most likely to have refilled anyway.
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class SharedBucket:
    """The same buckets kept in the vault's database, shared by every replica.

    Inactive (``limits`` None) until start-up finds a backend that shares limits. Should
    the database not answer, the in-memory bucket decides: the limit still holds per
    replica, and the request fails on the vault soon enough anyway.
    """

    def __init__(self, rate_per_second: float, burst: int, fallback: TokenBucketLimiter) -> None:
        self.interval = 1.0 / rate_per_second
        self.burst = burst
        self.fallback = fallback
        self.limits: SharedLimits | None = None

    async def take(self, key: tuple[str, str]) -> float:
        """Spend one token from ``key``'s bucket: 0.0 if allowed, else seconds until one is due."""
        if self.limits is None:
            return self.fallback.take(key)
        digest, remote = key
        try:
            # The digest's first half names the key well enough and is no usable secret.
            return await self.limits.limit_take(
                f"pk:{digest[:32]}:{remote}", self.interval, self.burst
            )
        except StorageUnavailable:
            return self.fallback.take(key)


LIMITER = web.AppKey("publishable_limiter", TokenBucketLimiter)
SHARED = web.AppKey("publishable_shared_limiter", SharedBucket)


def install(app: web.Application) -> None:
    """Give ``app`` its publishable-key rate limiter, sized from its settings."""
    settings = app[SETTINGS]
    rate = settings.publishable_rate_per_minute / 60.0
    app[LIMITER] = TokenBucketLimiter(rate, settings.publishable_burst)
    app[SHARED] = SharedBucket(rate, settings.publishable_burst, app[LIMITER])


def calling_origin(request: web.Request) -> str | None:
    """The origin of the page that made ``request`` (see the module docstring), normalised."""
    origin = _single(request, "Origin")
    if origin is None:
        return None
    if _from_own_page(request, origin):
        origin = _single(request, CHECKOUT_ORIGIN_HEADER)
        if origin is None:
            return None
    try:
        return parse_origin(origin)
    except OriginError:
        return None


def _single(request: web.Request, name: str) -> str | None:
    # A browser sends one Origin; two are a script's, and which one counts would depend
    # on who reads them (CORS answers the first): no origin is then proven.
    values = request.headers.getall(name, [])
    return values[0] if len(values) == 1 else None


def _from_own_page(request: web.Request, origin: str) -> bool:
    # Sec-Fetch-Site is set by the browser and cannot be changed by page scripts; the
    # host comparison covers deployments where it is not sent (plain http, old browsers).
    if request.headers.get("Sec-Fetch-Site") == "same-origin":
        return True
    try:
        return urlsplit(origin).netloc.lower() == request.host.lower()
    except ValueError:
        return False


async def check(request: web.Request, client: Client) -> None:
    """Enforce a publishable client's origin binding and rate limit (403 / 429)."""
    app = request.app
    origin = calling_origin(request)
    if origin is None or origin not in client.origins or origin not in app[SETTINGS].cors_origins:
        app[METRICS].auth_failures.labels("origin_not_allowed").inc()
        raise PermissionDenied(
            "This publishable key may not be used from this origin.", code="origin_not_allowed"
        )
    wait = await app[SHARED].take((client.key_digest, client_address(request)))
    if wait > 0:
        app[METRICS].auth_failures.labels("rate_limited").inc()
        raise RateLimited(
            "Too many requests with this publishable key; retry later.",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
