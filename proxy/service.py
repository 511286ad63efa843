"""The proxy's logic as plain functions: handlers parse and render, these decide.

Each function takes its dependencies (``Services``) explicitly so tests call it
directly with a real vault and a real (sandbox) partner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from proxy.errors import NotFound, PartnerError, ServiceUnavailable
from proxy.locks import KeyedLocks
from proxy.metrics import Metrics
from proxy.partners.base import Partner
from proxy.validation import parse_card_request
from vault import DecryptionFailed, Kind, NewRecord, RecordNotFound, Vault, VaultError, iso


@dataclass(slots=True)
class Services:
    """What the logic needs: the vault, the partner adapter and the metrics."""

    vault: Vault
    partner: Partner
    metrics: Metrics
    # Per-customer serialisation of first use, attach and erasure (proxy.customers).
    locks: KeyedLocks = field(default_factory=KeyedLocks)


async def tokenize_card(services: Services, body: object, *, today: date) -> dict[str, Any]:
    """Validate a card, hand it to the partner, store the partner's reference; return the token."""
    card = parse_card_request(body, today=today)
    if not services.vault.healthy:
        # The vault last failed to answer: re-check before the partner creates a payment
        # method we could not store. Free while healthy (a flag), one ping while down.
        await _vault_call(services, "ping", services.vault.ping())
    partner = services.partner
    metrics = services.metrics
    started = time.perf_counter()
    try:
        created = await partner.create_card(card)
    except PartnerError as exc:
        metrics.child(metrics.partner_requests, partner.name, "create_card", exc.code).inc()
        raise
    finally:
        metrics.child(metrics.partner_duration, partner.name, "create_card").observe(
            time.perf_counter() - started
        )
    metrics.child(metrics.partner_requests, partner.name, "create_card", "ok").inc()
    details = {"brand": card.brand, "last4": card.number.last4, "masked": card.number.masked}
    # With a customer_ref the card is attached to the customer's partner customer first.
    from proxy.customers import store_payment_method

    record = await store_payment_method(
        services,
        NewRecord(
            kind=Kind.CARD,
            partner=partner.name,
            partner_reference=created.reference,
            details=details,
            customer_ref=card.customer_ref,
            metadata=card.metadata,
            fingerprint=created.fingerprint,
        ),
    )
    metrics.child(metrics.tokens_created, "card").inc()
    return {"token": record.token, "kind": "card", **details, "created_at": iso(record.created_at)}


async def read_token(services: Services, token: str, *, resolve: bool) -> dict[str, Any]:
    """The masked view of a token, or with ``resolve`` also its partner reference."""
    try:
        record = await _vault_call(services, "get", services.vault.get(token))
    except RecordNotFound:
        raise NotFound("No such token.", param="token") from None
    if resolve:
        # Resolving is use (the billing service is about to charge): retention counts
        # from here. Marks are batched in memory and flushed in one write.
        services.vault.mark_used(record)
    view: dict[str, Any] = record.resolved_view() if resolve else record.masked_view()
    return view


async def _vault_call(services: Services, operation: str, call: Any) -> Any:
    """Await a vault coroutine, timing it and translating vault errors at the boundary."""
    metrics = services.metrics
    started = time.perf_counter()
    try:
        return await call
    except RecordNotFound:
        raise
    except DecryptionFailed:
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


# Public name for the lifecycle modules (proxy.customers, proxy.accounts, proxy.invoices).
vault_call = _vault_call
