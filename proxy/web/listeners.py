"""The API's listeners: TLS on each, the internal one beside the public one, certificate reload.

With ``TOKENPROXY_INTERNAL_LISTEN`` set, one application answers on two listeners: the
public one (``TOKENPROXY_LISTEN``, reached by browsers and the checkout) serves only the
operations marked ``public_listener`` in :mod:`proxy.web.api` (tokenization, the hosted
card fields, this API's document); the internal one serves everything and may demand a
client certificate. Without it, the one listener serves everything, as before. A route
asked for on the wrong listener is refused by the request middleware (see
``middleware.check_listener``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web

from proxy.infra.metrics import Metrics
from proxy.infra.settings import HostPort, Settings
from proxy.infra.tls import (
    CertificateError,
    CertificateReloader,
    ListenerContexts,
    is_loopback,
    not_after,
)
from proxy.web.appkeys import SETTINGS
from proxy.web.limits import ApiRunner, ConnectionLimits
from proxy.web.tasks import cancel_and_wait

_log = structlog.get_logger("tokenproxy")
INTERNAL = "internal"


class ListenerSite(web.SockSite):
    """A listening socket of an ``ApiRunner`` whose connections get their own ``limits``.

    The limits carry the listener's name, which decides the routes a connection reaches,
    and its own connection cap, so a flood on the public listener cannot take the places
    the internal one's clients need.
    """

    def __init__(
        self,
        runner: ApiRunner,
        sock: socket.socket,
        *,
        limits: ConnectionLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context)
        self._factory = runner.protocol_factory(limits)
        self._listen_sock = sock
        # The header clock starts once the handshake is done: until then a client holds
        # its socket for asyncio's default 60 s unless the handshake has its own deadline.
        self._handshake_timeout = limits.header_timeout

    async def start(self) -> None:
        """Register with the runner and listen with this site's protocol factory."""
        self._runner._reg_site(self)  # what BaseSite.start does
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory,
            sock=self._listen_sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None,
        )


def public_only(request: web.Request) -> bool:
    """Whether ``request`` came to the public listener while an internal one serves the rest."""
    if request.app[SETTINGS].internal_listen is None:
        return False
    return getattr(request.protocol, "listener", "public") != INTERNAL


def internal_limits(settings: Settings, metrics: Metrics) -> ConnectionLimits:
    """The internal listener's connection limits: the API's, counted on their own."""
    return ConnectionLimits(
        settings.header_timeout,
        settings.max_connections,
        metrics.closer(INTERNAL),
        listener=INTERNAL,
    )


def warn_plain_http(settings: Settings, contexts: ListenerContexts) -> None:
    """One warning per listener that speaks plain HTTP on an address beyond loopback."""
    listeners: list[tuple[str, HostPort | None, ssl.SSLContext | None]] = [
        ("public", settings.listen, contexts.public),
        (INTERNAL, settings.internal_listen, contexts.internal),
        ("ops", settings.ops_listen, contexts.ops),
    ]
    for name, address, context in listeners:
        if address is not None and context is None and not is_loopback(address.host):
            _log.warning(
                "plain_http_listener",
                listener=name,
                address=str(address),
                hint="set TOKENPROXY_TLS_CERT_FILE and TOKENPROXY_TLS_KEY_FILE",
            )


def reload_certificate(reloader: CertificateReloader | None, metrics: Metrics) -> None:
    """Load a renewed certificate or client-CA bundle if its files changed; logged and
    counted either way."""
    if reloader is None:
        return
    served = reloader.served_pair
    try:
        if reloader.reload():
            metrics.child(metrics.tls_reloads, "success").inc()
            files = {"cert": str(reloader.cert)}
            if reloader.client_ca is not None:
                files["client_ca"] = str(reloader.client_ca)
            _log.info("tls_reloaded", **files)
    except CertificateError as exc:
        metrics.child(metrics.tls_reloads, "failure").inc()
        _log.warning("tls_reload_failed", problem=str(exc))
    # The pair can load while a bundle read at the same look fails.
    if reloader.served_pair != served:
        _record_expiry(reloader.cert, metrics)


def _record_expiry(cert: Path, metrics: Metrics) -> None:
    expiry = not_after(cert)
    if expiry is not None:
        metrics.tls_expiry.set(expiry)


@contextlib.asynccontextmanager
async def following_certificate(
    settings: Settings, contexts: ListenerContexts, metrics: Metrics
) -> AsyncIterator[CertificateReloader | None]:
    """While the block runs, look at the certificate, key and client-CA files every
    TOKENPROXY_TLS_RELOAD_INTERVAL."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None or key is None:
        yield None
        return
    for outcome in ("success", "failure"):
        metrics.child(metrics.tls_reloads, outcome)
    _record_expiry(cert, metrics)
    ca = settings.tls_client_ca_file
    reloader = CertificateReloader(
        cert,
        key,
        contexts.all(),
        client_ca=ca,
        verifying=contexts.internal if ca is not None else None,
    )

    async def poll() -> None:
        while True:
            await asyncio.sleep(settings.tls_reload_interval)
            reload_certificate(reloader, metrics)

    task = asyncio.create_task(poll())
    try:
        yield reloader
    finally:
        await cancel_and_wait(task)
