"""The proxy's logic as plain functions: handlers parse and render, these decide.

Each function takes its dependencies (``Services``) explicitly so tests call it
directly with a real vault and a real (sandbox) partner.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

import structlog

from proxy.core.locks import KeyedLocks
from proxy.domain.errors import NotFound, PartnerError, ServiceUnavailable
from proxy.domain.validation import CardRequest, parse_card_request
from proxy.infra.metrics import Metrics
from proxy.partners.ports import Partner, PartnerCard
from proxy.partners.resilience import new_partner_key
from vault import (
    DecryptionFailed,
    IdempotencyBusy,
    IdempotencyErased,
    IdempotencyMismatch,
    IdempotencyStore,
    Kind,
    NewRecord,
    Record,
    RecordNotFound,
    UnknownKeyVersion,
    Vault,
    VaultError,
    iso,
)

T = TypeVar("T")
_log = structlog.get_logger("tokenproxy.service")


@dataclass(slots=True)
class Services:
    """What the logic needs: the vault, the partner adapter and the metrics."""

    vault: Vault
    partner: Partner
    metrics: Metrics
    # Built by create_app; None only where a test wires Services by hand without it.
    idempotency: IdempotencyStore | None = None
    # Per-customer serialisation of first use, attach and erasure (proxy.core.customers).
    locks: KeyedLocks = field(default_factory=KeyedLocks)


async def tokenize_card(
    services: Services, body: object, *, today: date, actor: str | None = None
) -> dict[str, Any]:
    """Validate a card, hand it to the partner, store the partner's reference; return the token.

    Without an Idempotency-Key the partner call still carries a per-request partner key,
    so the proxy's own retries cannot create a second payment method.
    """
    card = parse_card_request(body, today=today)
    partner_key = new_partner_key()
    created = await create_at_partner(services, card, partner_key)
    try:
        record = await store_card(services, card, created, actor=actor)
    except ServiceUnavailable:
        # The partner holds a card we could not link: no retry can find it again (the
        # client sent no key). Count it and log the partner key, which the partner's
        # request log is searchable by, so an operator can reconcile.
        services.metrics.partner_orphans.labels(services.partner.name).inc()
        _log.error("partner_reference_orphaned", partner_idempotency_key=partner_key)
        raise
    return card_response(record)


async def ensure_vault_up(services: Services) -> None:
    """Refuse (503) before a partner call while the vault is known to be down.

    A payment method created at the partner that we then cannot store is an orphan, so
    while the vault's last call failed we re-check it first. Free while healthy (a
    flag); one ping while down, which also marks it healthy again once it answers.
    """
    if not services.vault.healthy:
        await _vault_call(services, "ping", services.vault.ping())


async def create_at_partner(services: Services, card: CardRequest, partner_key: str) -> PartnerCard:
    """The partner call for a card, timed and counted; refused while the vault is down."""
    await ensure_vault_up(services)
    return await partner_call(
        services, "create_card", services.partner.create_card(card, idempotency_key=partner_key)
    )


async def partner_call(services: Services, operation: str, call: Awaitable[T]) -> T:
    """Await a partner coroutine, counting and timing it under ``operation``."""
    partner, metrics = services.partner, services.metrics
    started = time.perf_counter()
    try:
        result = await call
    except PartnerError as exc:
        metrics.child(metrics.partner_requests, partner.name, operation, exc.code).inc()
        raise
    finally:
        metrics.child(metrics.partner_duration, partner.name, operation).observe(
            time.perf_counter() - started
        )
    metrics.child(metrics.partner_requests, partner.name, operation, "ok").inc()
    return result


async def store_card(
    services: Services,
    card: CardRequest,
    created: PartnerCard,
    *,
    token: str | None = None,
    actor: str | None = None,
    fingerprint_idx: str | None = None,
) -> Record:
    """Seal the partner's answer into the vault under a new (or the given) token.

    With a customer_ref the card is first saved on the customer's partner customer for
    off-session charges (which may need the cardholder: AuthenticationRequired).
    ``fingerprint_idx`` stands in for ``created.fingerprint`` when only its blind index
    was kept (an idempotent request resuming from its stored partner answer).
    """
    from proxy.core.customers import SaveRequest, store_payment_method  # imports this module

    details = {"brand": card.brand, "last4": card.number.last4, "masked": card.number.masked}
    record = await store_payment_method(
        services,
        NewRecord(
            kind=Kind.CARD,
            partner=services.partner.name,
            partner_reference=created.reference,
            details=details,
            customer_ref=card.customer_ref,
            metadata=card.metadata,
            fingerprint=created.fingerprint,
            fingerprint_idx=fingerprint_idx,
        ),
        token=token,
        save=SaveRequest(actor=actor, return_url=card.return_url),
    )
    services.metrics.child(services.metrics.tokens_created, "card").inc()
    return record


def created_response(record: Record) -> dict[str, Any]:
    """The body of a 201 for a bank or invoice token: the masked view without metadata."""
    view = record.masked_view()
    del view["metadata"]
    return view


def card_response(record: Record) -> dict[str, Any]:
    """The body of a 201 for a card token."""
    return {
        "token": record.token,
        "kind": "card",
        **{k: record.details[k] for k in ("brand", "last4", "masked")},
        "created_at": iso(record.created_at),
    }


async def read_token(services: Services, token: str, *, resolve: bool) -> dict[str, Any]:
    """The masked view of a token, or with ``resolve`` what an off-session charge needs."""
    try:
        record = await _vault_call(services, "get", services.vault.get(token))
    except RecordNotFound:
        raise NotFound("No such token.", param="token") from None
    if not resolve:
        masked: dict[str, Any] = record.masked_view()
        return masked
    # Resolving is use (the billing service is about to charge): retention counts
    # from here. Marks are batched in memory and flushed in one write.
    services.vault.mark_used(record)
    view: dict[str, Any] = record.resolved_view()
    if (
        record.customer_ref is not None
        and record.kind in (Kind.CARD, Kind.BANK)
        and "partner_customer" not in view
    ):
        # Saved before records kept their partner customer: the mapping names it.
        customer = await _vault_call(
            services, "get_customer", services.vault.get_partner_customer(record.customer_ref)
        )
        if customer is not None and customer.partner == record.partner:
            view["partner_customer"] = customer.reference
    return view


async def _vault_call(services: Services, operation: str, call: Any) -> Any:
    """Await a vault coroutine, timing it and translating vault errors at the boundary."""
    metrics = services.metrics
    started = time.perf_counter()
    try:
        return await call
    except (RecordNotFound, IdempotencyMismatch, IdempotencyBusy, IdempotencyErased):
        raise
    except (DecryptionFailed, UnknownKeyVersion):
        # A data key wrapped under a version this ring lacks is as unreadable as one that
        # fails authentication: say so, rather than blame the vault's availability.
        metrics.decryption_failures.inc()
        metrics.vault_errors.labels(operation, "decryption_failed").inc()
        # A record that fails authentication is tampered with or its key is gone: an
        # operator problem, never data. The client learns only that we failed.
        raise ServiceUnavailable(
            "The record could not be read.", code="record_unreadable"
        ) from None
    except VaultError as exc:
        metrics.vault_errors.labels(operation, type(exc).__name__).inc()
        raise ServiceUnavailable("The vault is unavailable.", code="vault_unavailable") from None
    finally:
        metrics.child(metrics.vault_duration, operation).observe(time.perf_counter() - started)


# Public name for proxy.core.idempotent and the lifecycle modules (customers, accounts, invoices).
vault_call = _vault_call
