"""App factories: the API app and the ops app (metrics, health), and the server runner."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy import cors, publishable, retention
from proxy.appkeys import CLIENTS, METRICS, SERVICES, SETTINGS
from proxy.audit import AUDIT_TASKS, drain_audit
from proxy.clientreload import follow_clients_file, reload_clients
from proxy.clients import ClientRegistry
from proxy.kek import load_provider
from proxy.keystatus import refresh_key_metrics
from proxy.limits import ApiRunner, server_options
from proxy.metrics import Metrics
from proxy.middleware import request_middleware
from proxy.partners.base import Partner
from proxy.partners.resilience import CircuitBreaker, ResilientPartner, RetryPolicy
from proxy.partners.stripe import StripePartner
from proxy.routes import ROUTES
from proxy.service import Services
from proxy.settings import Settings
from vault import IdempotencyStore, StorageUnavailable, Vault, VaultError
from vault.rotation import check_key_coverage

_log = structlog.get_logger("tokenproxy")
VERSION = "0.1.0"
_READY = web.AppKey("ready", asyncio.Event)


def create_app(
    settings: Settings,
    *,
    vault: Vault | None = None,
    partner: Partner | None = None,
    clients: ClientRegistry | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """The API application. Dependencies not given are built from ``settings`` at start-up."""
    app = web.Application(middlewares=[request_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics(version=VERSION)
    app[CLIENTS] = clients if clients is not None else ClientRegistry.load(settings.clients_path)
    app[_READY] = asyncio.Event()
    app[AUDIT_TASKS] = set()
    app.add_routes(ROUTES)
    cors.install(app)
    publishable.install(app)

    async def dependencies(app: web.Application) -> AsyncIterator[None]:
        own_vault = vault is None
        own_partner = partner is None
        the_vault = vault
        if the_vault is None:
            keys = load_provider(settings)
            the_vault = await Vault.open(
                settings.vault_url,
                keys,
                migrate=settings.migrate_on_start,
                pool_min=settings.db_pool_min,
                pool_max=settings.db_pool_max,
                db_timeout=settings.db_timeout,
                retention=settings.retention_policy(),
            )
        try:
            # Fail closed: data keys under a retired or unknown version mean a wrong ring.
            await check_key_coverage(the_vault, source=f"key ring {settings.keyring_path}")
            the_partner = partner
            if the_partner is None:
                the_partner = StripePartner(
                    settings.stripe_api_key or "sk_test_sandbox",
                    api_base=settings.stripe_api_base,
                    timeout=settings.partner_timeout,
                    connect_timeout=settings.partner_connect_timeout,
                )
            app[SERVICES] = Services(
                vault=the_vault,
                partner=resilient(the_partner, settings, app[METRICS]),
                metrics=app[METRICS],
                idempotency=IdempotencyStore(
                    the_vault,
                    ttl=settings.idempotency_ttl,
                    stale_after=settings.idempotency_stale_after,
                ),
            )
            purger = asyncio.create_task(_purge_idempotency_keys(app[SERVICES], settings))
            app[_READY].set()
            app[METRICS].ready.set(1)
            yield
            app[_READY].clear()
            app[METRICS].ready.set(0)
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
            await drain_audit(app)
            if own_partner:
                await the_partner.close()
        finally:
            if own_vault:
                await the_vault.close()

    app.cleanup_ctx.append(dependencies)
    app.cleanup_ctx.append(follow_clients_file)
    # After dependencies: stops (with a last flush of last-use marks) before the vault closes.
    app.cleanup_ctx.append(retention.background)
    return app


def resilient(partner: Partner, settings: Settings, metrics: Metrics) -> Partner:
    """``partner`` behind the retry policy and circuit breaker the settings describe."""
    if isinstance(partner, ResilientPartner):
        return partner
    return ResilientPartner(
        partner,
        policy=RetryPolicy(
            max_retries=settings.partner_max_retries,
            budget=settings.partner_retry_budget,
            backoff_base=settings.partner_backoff_base,
            backoff_max=settings.partner_backoff_max,
        ),
        breaker=CircuitBreaker(
            failures=settings.breaker_failures, reset_after=settings.breaker_reset
        ),
        metrics=metrics,
    )


async def _purge_idempotency_keys(services: Services, settings: Settings) -> None:
    """Delete expired idempotency keys now and then (a quarter TTL, at most every 10 min)."""
    store = services.idempotency
    assert store is not None  # noqa: S101 - built just above
    interval = min(settings.idempotency_ttl / 4, 600.0)
    while True:
        try:
            purged = await store.purge_expired()
        except VaultError:
            _log.warning("idempotency_purge_failed")
        else:
            if purged:
                _log.info("idempotency_purged", count=purged)
        await asyncio.sleep(interval)


def create_ops_app(api: web.Application) -> web.Application:
    """The ops listener: /metrics, /healthz (process alive), /readyz (vault answers)."""
    ops = web.Application()
    metrics = api[METRICS]

    async def metrics_handler(request: web.Request) -> web.Response:
        if SERVICES in api:
            await refresh_key_metrics(metrics, api[SERVICES].vault)
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if not api[_READY].is_set() or SERVICES not in api:
            metrics.ready.set(0)
            return web.json_response({"status": "starting"}, status=503)
        try:
            await api[SERVICES].vault.ping()
        except StorageUnavailable:
            metrics.ready.set(0)
            return web.json_response({"status": "vault_unavailable"}, status=503)
        metrics.ready.set(1)
        return web.json_response({"status": "ready"})

    ops.add_routes(
        [
            web.get("/metrics", metrics_handler, allow_head=False),
            web.get("/healthz", healthz, allow_head=False),
            web.get("/readyz", readyz, allow_head=False),
        ]
    )
    return ops


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run the API and ops listeners until SIGTERM/SIGINT (or ``stop``), then drain."""
    api = create_app(settings)
    ops = create_ops_app(api)
    api_runner = ApiRunner(api, access_log=None, **server_options(settings))
    ops_runner = ApiRunner(ops, access_log=None)
    await api_runner.setup()
    try:
        await ops_runner.setup()
        await web.TCPSite(api_runner, settings.listen.host, settings.listen.port).start()
        await web.TCPSite(ops_runner, settings.ops_listen.host, settings.ops_listen.port).start()
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload_clients, api)
        _log.info("started", **settings.strip_hazmat())
        await stop.wait()
        _log.info("stopping", grace_seconds=settings.shutdown_grace)
    finally:
        # API first: stop accepting (the listening socket closes at once), let in-flight
        # requests finish within the grace period, then close the partner pool and vault.
        await api_runner.cleanup()
        await ops_runner.cleanup()
        _log.info("stopped")
