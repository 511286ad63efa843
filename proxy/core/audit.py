"""Audit events the proxy writes for resolves, deletions and erasures (fail closed).

A resolve hands out a partner reference, so it happens only once its audit event is
durable: if the event cannot be written the client gets 503 ``audit_unavailable`` and no
data (PCI DSS 10.2; HashiCorp Vault's audit devices behave the same). Failed
authentications are tallied and written in batches by :mod:`proxy.web.authguard`.
"""

from __future__ import annotations

from typing import Any, Final

from pandetect import holds_pan
from proxy.core.services import Services
from proxy.core.tokens import read_token
from proxy.domain.errors import ProxyError, ServiceUnavailable
from proxy.infra.metrics import Metrics
from vault import Vault
from vault.audit import EventType, Outcome
from vault.errors import AuditUnavailable

# Every kind the trail records as a keyed digest: `tokenproxy audit digest` offers each,
# or an operator could not find an event that names its value only by digest.
DIGEST_KINDS: Final = (
    "token",
    "customer",
    "payment_method",
    "partner_key",
    "event",
    "ip_address",
    "origin",
    "client",
    "cert_subject",
)


def recordable(vault: Vault, what: str, value: str) -> str:
    """``value`` for an audit field, or its keyed digest ``what:…`` when the trail would refuse it.

    An id from outside the proxy (a Stripe event id, a shopper's address, a name typed for
    a client that does not exist) is opaque text that can hold a Luhn-valid run of 13-19
    digits by chance. The trail refuses such a run, as it must, and an id recorded as sent
    would then fail the audited action on every retry: Stripe redelivers an event for
    days. Its digest still lets an operator find the event (``tokenproxy audit digest``).
    The test is the trail's own, so the trail never refuses what this returns.
    """
    return vault.audit.digest(what, value) if holds_pan(value, hex_words=True) else value


def resource_of(vault: Vault, token: str, *, found: bool) -> str:
    """A token as an audit resource: verbatim only once the vault has shown it holds it.

    The path segment is client-chosen and may even be shaped like a token around a card
    number (``vtok_card_4242…``): until the vault has found it, it is not one of ours,
    so only its keyed digest is recorded. A token the vault holds was minted from
    ``secrets`` and carries no client data.
    """
    return token if found else vault.audit.digest("token", token)


async def append_event(
    vault: Vault,
    event_type: str,
    *,
    outcome: Outcome | bool,
    actor: str | None,
    origin: str | None,
    resource: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append an event; an origin the card-number check refuses is recorded as its digest.

    The origin is the peer's address, which the peer picks: an IPv6 address written in
    decimal-looking groups can pass for a card number, and must neither enter the trail
    nor make the audited action fail. AuditUnavailable when the event cannot be written.
    """
    for digested in (False, True):
        if digested and origin is None:
            break
        # The digest is made only after a refusal: resolves pay no HMAC for it.
        attempt = vault.audit.digest("origin", origin) if digested and origin else origin
        try:
            await vault.audit.append(
                event_type,
                outcome=outcome,
                actor=actor,
                origin=attempt,
                resource=resource,
                detail=detail,
            )
        except ValueError:
            continue
        return
    raise AuditUnavailable("the audit event was refused")


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
        await append_event(
            vault,
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
        view = await read_token(services, token, resolve=True)
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
