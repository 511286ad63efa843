"""App factories: the API app and the ops app (metrics, health), and the server runner."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.core.services import Services
from proxy.infra.clients import ClientRegistry
from proxy.infra.keys import load_provider
from proxy.infra.keystatus import refresh_key_metrics
from proxy.infra.metrics import Metrics
from proxy.infra.settings import HostPort, Settings, SettingsError
from proxy.partners.ports import Partner
from proxy.partners.resilience import CircuitBreaker, ResilientPartner, RetryPolicy
from proxy.partners.stripe import StripePartner
from proxy.web import authguard, background, cors, publishable, runtime
from proxy.web.appkeys import CLIENTS, METRICS, SERVICES, SETTINGS
from proxy.web.clientreload import follow_clients_file, reload_clients
from proxy.web.limits import ApiRunner, ops_server_options, server_options
from proxy.web.middleware import ops_error_middleware, request_middleware
from proxy.web.routes import ROUTES
from vault import (
    IdempotencyStore,
    KeyRingError,
    KeyRingMismatch,
    StorageUnavailable,
    Vault,
    VaultError,
)
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
    app[METRICS] = metrics or Metrics(
        version=VERSION, multiprocess_dir=settings.metrics_multiproc_dir
    )
    app[CLIENTS] = clients if clients is not None else ClientRegistry.load(settings.clients_path)
    app[_READY] = asyncio.Event()
    app.add_routes(ROUTES)
    cors.install(app)
    publishable.install(app)
    authguard.install(app)

    async def dependencies(app: web.Application) -> AsyncIterator[None]:
        own_vault = vault is None
        own_partner = partner is None
        the_vault = vault
        source = f"key ring {settings.keyring_path}"
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
                source=source,
            )
        try:
            # Fail closed: a ring that is not the one the vault recorded opens nothing, and
            # data keys under a retired or unknown version mean a wrong or stale ring.
            await the_vault.check_key_ring(source=source)
            await check_key_coverage(the_vault, source=source)
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
            # Once per deployment, not once per worker (see Settings.singleton_jobs).
            purger = (
                asyncio.create_task(_purge_idempotency_keys(app[SERVICES], settings))
                if settings.singleton_jobs
                else None
            )
            app[_READY].set()
            app[METRICS].ready.set(1)
            yield
            app[_READY].clear()
            app[METRICS].ready.set(0)
            if purger is not None:
                purger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await purger
            if own_partner:
                await the_partner.close()
        finally:
            if own_vault:
                await the_vault.close()

    app.cleanup_ctx.append(dependencies)
    app.cleanup_ctx.append(follow_clients_file)
    # After dependencies: stops (with a last flush of last-use marks) before the vault closes.
    app.cleanup_ctx.append(background.retention_jobs)
    # Last, so its final flush of auth-failure events runs before the vault closes.
    app.cleanup_ctx.append(authguard.background)
    app.cleanup_ctx.append(runtime.runtime_tasks)
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
    ops = web.Application(middlewares=[ops_error_middleware])
    metrics = api[METRICS]

    async def metrics_handler(request: web.Request) -> web.Response:
        if SERVICES in api:
            await refresh_key_metrics(metrics, api[SERVICES].vault)
        body = generate_latest(metrics.exposition_registry())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if not api[_READY].is_set() or SERVICES not in api:
            metrics.ready.set(0)
            return web.json_response({"status": "starting"}, status=503)
        vault = api[SERVICES].vault
        try:
            await vault.ping()
            # One small query while nothing changed; a rotation adopted since start-up is
            # verified (and its check value recorded if the CLI has not yet) here.
            await vault.check_key_ring(source=f"key ring {api[SETTINGS].keyring_path}")
        except StorageUnavailable:
            metrics.ready.set(0)
            return web.json_response({"status": "vault_unavailable"}, status=503)
        except KeyRingMismatch as exc:
            metrics.ready.set(0)
            _log.error("key_ring_mismatch", problem=str(exc))
            return web.json_response({"status": "key_ring_mismatch"}, status=503)
        except KeyRingError:
            # Undecidable (the key service is unreachable): not ready, but not a mismatch.
            metrics.ready.set(0)
            return web.json_response({"status": "key_ring_unavailable"}, status=503)
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


class ListenError(SettingsError):
    """A listen address cannot be bound; the one-line message names it and its setting."""


def bind_listeners(
    api: HostPort, ops: HostPort, *, reuse_port: bool = False
) -> tuple[socket.socket, socket.socket]:
    """Listening sockets for the API and ops addresses, or ListenError naming the first failing.

    Bound before anything is written or printed, so a busy port costs one line and no
    half-started state (a new dev key, a banner for a server that never runs).
    """
    bound: list[socket.socket] = []
    try:
        for address, setting in ((api, "TOKENPROXY_LISTEN"), (ops, "TOKENPROXY_OPS_LISTEN")):
            bound.append(_bind(address, setting, reuse_port=reuse_port))
    except ListenError:
        for sock in bound:
            sock.close()
        raise
    return bound[0], bound[1]


def _bind(address: HostPort, setting: str, *, reuse_port: bool = False) -> socket.socket:
    try:
        family = socket.getaddrinfo(
            address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0][0]
        # reuse_port: each worker binds the same port and the kernel spreads connections.
        return socket.create_server(
            (address.host, address.port), family=family, backlog=128, reuse_port=reuse_port
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "address in use"
        else:
            reason = (exc.strerror or type(exc).__name__).lower()
        raise ListenError(f"cannot listen on {address} ({reason}); set {setting}") from None


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    sockets: tuple[socket.socket, socket.socket] | None = None,
    on_started: Callable[[], None] | None = None,
) -> None:
    """Run the API and ops listeners until SIGTERM/SIGINT (or ``stop``), then drain.

    ``sockets`` are the listeners from ``bind_listeners``; bound here when not given.
    ``on_started`` runs once both listeners serve (a worker tells its supervisor).
    """
    api_socket, ops_socket = sockets or bind_listeners(settings.listen, settings.ops_listen)
    api = create_app(settings)
    ops = create_ops_app(api)
    metrics = api[METRICS]
    api_runner = ApiRunner(api, access_log=None, **server_options(settings, metrics.closer("api")))
    ops_runner = ApiRunner(
        ops, access_log=None, **ops_server_options(settings, metrics.closer("ops"))
    )
    await api_runner.setup()
    try:
        await ops_runner.setup()
        await web.SockSite(api_runner, api_socket).start()
        await web.SockSite(ops_runner, ops_socket).start()
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload_clients, api)
        _log.info("started", **settings.strip_hazmat())
        if on_started is not None:
            on_started()
        await stop.wait()
        _log.info("stopping", grace_seconds=settings.shutdown_grace)
    finally:
        # API first: stop accepting (the listening socket closes at once), let in-flight
        # requests finish within the grace period, then close the partner pool and vault.
        await api_runner.cleanup()
        await ops_runner.cleanup()
        _log.info("stopped")
