"""Audit events the proxy writes: resolves (fail closed) and failed authentications.

A resolve hands out a partner reference, so it happens only once its audit event is
durable: if the event cannot be written the client gets 503 ``audit_unavailable`` and no
data (PCI DSS 10.2; HashiCorp Vault's audit devices behave the same). Failed
authentications reveal nothing, so their events are written in the background without
delaying the 401/403; the app drains them before it closes the vault.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web

from proxy import service
from proxy.appkeys import METRICS, SERVICES
from proxy.errors import ProxyError, ServiceUnavailable
from proxy.metrics import Metrics
from proxy.service import Services
from vault import Vault
from vault.audit import EventType, Outcome
from vault.errors import AuditUnavailable

AUDIT_TASKS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("audit_tasks", set)

_log = structlog.get_logger("tokenproxy.audit")


def resource_of(vault: Vault, token: str, *, found: bool) -> str:
    """A token as an audit resource: verbatim only once the vault has shown it holds it.

    The path segment is client-chosen and may even be shaped like a token around a card
    number (``vtok_card_4242…``): until the vault has found it, it is not one of ours,
    so only its keyed digest is recorded. A token the vault holds was minted from
    ``secrets`` and carries no client data.
    """
    return token if found else vault.audit.digest("token", token)


async def append_or_refuse(
    vault: Vault,
    metrics: Metrics,
    event_type: str,
    *,
    outcome: Outcome | bool,
    actor: str | None,
    origin: str | None,
    resource: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write an audit event; ServiceUnavailable (503) when it cannot be written."""
    try:
        await vault.audit.append(
            event_type,
            outcome=outcome,
            actor=actor,
            origin=origin,
            resource=resource,
            detail=detail,
        )
    except AuditUnavailable:
        metrics.audit_failures.labels(event_type).inc()
        raise ServiceUnavailable(
            "The audit trail is unavailable; the request was refused.", code="audit_unavailable"
        ) from None


async def audited_resolve(
    services: Services, token: str, *, actor: str, origin: str | None
) -> dict[str, Any]:
    """Resolve ``token`` and record it; no partner reference leaves without its event."""
    try:
        view = await service.read_token(services, token, resolve=True)
    except ProxyError as exc:
        await append_or_refuse(
            services.vault,
            services.metrics,
            EventType.RESOLVE,
            outcome=Outcome.FAILURE,
            actor=actor,
            origin=origin,
            resource=resource_of(services.vault, token, found=False),
            detail={"error": exc.code},
        )
        raise
    await append_or_refuse(
        services.vault,
        services.metrics,
        EventType.RESOLVE,
        outcome=Outcome.SUCCESS,
        actor=actor,
        origin=origin,
        resource=resource_of(services.vault, token, found=True),
    )
    return view


def audit_auth_failure(request: web.Request, reason: str, actor: str | None = None) -> None:
    """Record a refused authentication in the background (never delays the 401/403)."""
    if SERVICES not in request.app or AUDIT_TASKS not in request.app:
        return
    vault = request.app[SERVICES].vault
    metrics = request.app[METRICS]
    tasks = request.app[AUDIT_TASKS]
    route = request.match_info.route.resource
    detail = {"reason": reason, "route": route.canonical if route is not None else "unmatched"}

    async def write() -> None:
        try:
            await vault.audit.append(
                EventType.AUTH_FAILURE,
                outcome=Outcome.FAILURE,
                actor=actor,
                origin=request.remote,
                detail=detail,
            )
        except AuditUnavailable:
            metrics.audit_failures.labels(EventType.AUTH_FAILURE).inc()
            _log.error("audit_write_failed", event_type=str(EventType.AUTH_FAILURE))

    task = asyncio.get_running_loop().create_task(write())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def drain_audit(app: web.Application) -> None:
    """Wait for background audit writes (at shutdown, before the vault closes)."""
    tasks = app.get(AUDIT_TASKS)
    if tasks:
        await asyncio.gather(*list(tasks), return_exceptions=True)
