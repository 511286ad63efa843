"""App factories: the API app and the ops app (metrics, health), and the server runner."""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.core.services import PARTNER_FAILURES, PARTNER_OPERATIONS, VAULT_OPERATIONS, Services
from proxy.infra.clients import ClientRegistry
from proxy.infra.keys import load_provider
from proxy.infra.keystatus import follow_key_status, observe_scrape
from proxy.infra.metrics import Metrics
from proxy.infra.settings import HostPort, Settings, SettingsError
from proxy.infra.syncstatus import follow_reconcile_status
from proxy.infra.tls import ListenerContexts, listener_contexts
from proxy.partners.budget import OutboundBudget
from proxy.partners.ports import Partner
from proxy.partners.resilience import CircuitBreaker, ResilientPartner, RetryPolicy
from proxy.partners.stripe import StripePartner
from proxy.web import authguard, background, cors, publishable, runtime
from proxy.web.appkeys import CLIENTS, METRICS, SERVICES, SETTINGS
from proxy.web.clientreload import follow_clients_file, reload_clients
from proxy.web.limits import ApiRunner, ConnectionLimits, ops_server_options, server_options
from proxy.web.listeners import (
    ListenerSite,
    following_certificate,
    internal_limits,
    reload_certificate,
    warn_plain_http,
)
from proxy.web.middleware import ops_error_middleware, request_middleware
from proxy.web.readiness import READINESS, Readiness
from proxy.web.routes import ROUTES
from proxy.web.sharedlimits import share_limits
from proxy.web.tasks import cancel_and_wait
from vault import (
    IdempotencyStore,
    Kind,
    Vault,
    VaultError,
)
from vault.audit import EventType
from vault.rotation import check_key_coverage

_log = structlog.get_logger("tokenproxy")


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
    app[METRICS] = metrics or Metrics(multiprocess_dir=settings.metrics_multiproc_dir)
    app[CLIENTS] = clients if clients is not None else ClientRegistry.load(settings.clients_path)
    app[READINESS] = Readiness(app[METRICS], timeout=2 * settings.db_timeout)
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
                migrate_timeout=settings.migrate_timeout,
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
                    allow_redisplay=settings.allow_redisplay,
                )
            app[METRICS].zero_known_series(
                partner=the_partner.name,
                partner_operations=PARTNER_OPERATIONS,
                partner_failures=PARTNER_FAILURES,
                vault_operations=VAULT_OPERATIONS,
                event_types=[str(event_type) for event_type in EventType],
                kinds=[str(kind) for kind in Kind],
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
            # Once per deployment, not once per worker (see Settings.singleton_jobs): the
            # idempotency purge, and the background reads behind the vault-wide gauges.
            tasks = (
                [
                    asyncio.create_task(_purge_idempotency_keys(app[SERVICES], settings)),
                    asyncio.create_task(
                        follow_key_status(
                            app[METRICS], the_vault, interval=settings.key_status_interval
                        )
                    ),
                    asyncio.create_task(
                        follow_reconcile_status(
                            app[METRICS].sync, the_vault, interval=settings.key_status_interval
                        )
                    ),
                ]
                if settings.singleton_jobs
                else []
            )
            try:
                async with app[READINESS].probing(the_vault, source=source):
                    yield
                    app[READINESS].stopping()
            finally:
                await cancel_and_wait(*tasks)
            if own_partner:
                await the_partner.close()
        finally:
            if own_vault:
                await the_vault.close()

    app.cleanup_ctx.append(dependencies)
    # After dependencies: the limits move into the vault's database once it is open.
    app.cleanup_ctx.append(share_limits)
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
    rate = settings.outbound_rate()
    budget = None
    if rate is not None:
        scope = getattr(partner, "budget_scope", "default")
        budget = OutboundBudget(
            rate, key=f"partner:{partner.name}:{scope}", processes=settings.workers
        )
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
        max_in_flight=settings.partner_max_in_flight,
        budget=budget,
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
    """The ops listener: /metrics, /healthz (process alive), /readyz (proxy.web.readiness)."""
    ops = web.Application(middlewares=[ops_error_middleware])
    metrics = api[METRICS]

    async def metrics_handler(request: web.Request) -> web.Response:
        # No query here: the data-key gauges are refreshed in the background
        # (proxy.infra.keystatus); key age and pool use are read from memory.
        if SERVICES in api:
            observe_scrape(metrics, api[SERVICES].vault)
        body = generate_latest(metrics.exposition_registry())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        # The last background result (proxy.web.readiness): a probe never waits on the vault.
        answer = api[READINESS].answer()
        return web.json_response(answer.body, status=answer.http_status)

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


def bind_internal(settings: Settings, *, reuse_port: bool = False) -> socket.socket | None:
    """The internal API listener's socket, when TOKENPROXY_INTERNAL_LISTEN asks for one."""
    if settings.internal_listen is None:
        return None
    return _bind(settings.internal_listen, "TOKENPROXY_INTERNAL_LISTEN", reuse_port=reuse_port)


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
    internal_socket: socket.socket | None = None,
    on_started: Callable[[], None] | None = None,
) -> None:
    """Run the API and ops listeners until SIGTERM/SIGINT (or ``stop``), then drain.

    ``sockets`` are the listeners from ``bind_listeners`` and ``internal_socket`` the one
    from ``bind_internal``; bound here when not given. ``on_started`` runs once every
    listener serves (a worker tells its supervisor).
    """
    # Certificates load before any socket is bound: a bad file costs one line, nothing else.
    contexts = listener_contexts(settings)
    api_socket, ops_socket = sockets or bind_listeners(settings.listen, settings.ops_listen)
    internal_socket = internal_socket or bind_internal(settings)
    api = create_app(settings)
    ops = create_ops_app(api)
    metrics = api[METRICS]
    api_runner = ApiRunner(api, access_log=None, **server_options(settings, metrics.closer("api")))
    ops_runner = ApiRunner(
        ops, access_log=None, **ops_server_options(settings, metrics.closer("ops"))
    )
    warn_plain_http(settings, contexts)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    # From the first moment, not after start-up: a SIGTERM while migrations or start-up
    # checks run must stop the process, and as PID 1 in a container the kernel's default
    # action (terminate) does not apply, so without a handler it would be ignored.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        internal = (
            (internal_socket, internal_limits(settings, metrics))
            if internal_socket is not None
            else None
        )
        started = await _unless_stopped(
            _start(
                api_runner,
                ops_runner,
                api_socket,
                ops_socket,
                internal=internal,
                contexts=contexts,
            ),
            stop,
        )
        if started:
            async with following_certificate(settings, contexts, metrics) as reloader:

                def reload_files() -> None:
                    reload_clients(api)
                    reload_certificate(reloader, metrics)

                loop.add_signal_handler(signal.SIGHUP, reload_files)
                _log.info("started", **settings.strip_hazmat())
                if on_started is not None:
                    on_started()
                await stop.wait()
                # Out of the Service at once, while in-flight requests drain.
                api[READINESS].stopping()
                _log.info("stopping", grace_seconds=settings.shutdown_grace)
        else:
            _log.info("stopping", during="start-up")
    finally:
        # API first: stop accepting (the listening socket closes at once), let in-flight
        # requests finish within the grace period, then close the partner pool and vault.
        await api_runner.cleanup()
        await ops_runner.cleanup()
        _log.info("stopped")


async def _start(
    api: ApiRunner,
    ops: ApiRunner,
    api_socket: socket.socket,
    ops_socket: socket.socket,
    *,
    internal: tuple[socket.socket, ConnectionLimits] | None,
    contexts: ListenerContexts,
) -> None:
    await api.setup()
    await ops.setup()
    await ListenerSite(api, api_socket, limits=api.limits, ssl_context=contexts.public).start()
    if internal is not None:
        internal_socket, limits = internal
        await ListenerSite(
            api, internal_socket, limits=limits, ssl_context=contexts.internal
        ).start()
    await ListenerSite(ops, ops_socket, limits=ops.limits, ssl_context=contexts.ops).start()


async def _unless_stopped(start: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run ``start`` unless ``stop`` is set first, which cancels it; True when it finished."""
    task = asyncio.ensure_future(start)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        stopped.cancel()
    if task.done():
        task.result()  # a start-up failure is raised as it was
        return True
    await cancel_and_wait(task)
    return False
