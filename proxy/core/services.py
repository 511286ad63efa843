"""What every use case shares: the Services bundle and the timed partner and vault calls.

Each function takes its dependencies (``Services``) explicitly so tests call it
directly with a real vault and a real (sandbox) partner.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from proxy.core.locks import KeyedLocks
from proxy.domain.errors import PartnerError, ServiceUnavailable
from proxy.infra.metrics import Metrics
from proxy.partners.ports import Partner
from vault import (
    DecryptionFailed,
    IdempotencyBusy,
    IdempotencyErased,
    IdempotencyMismatch,
    IdempotencyStore,
    RecordNotFound,
    UnknownKeyVersion,
    Vault,
    VaultError,
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


async def ensure_vault_up(services: Services) -> None:
    """Refuse (503) before a partner call while the vault is known to be down.

    A payment method created at the partner that we then cannot store is an orphan, so
    while the vault's last call failed we re-check it first. Free while healthy (a
    flag); one ping while down, which also marks it healthy again once it answers.
    """
    if not services.vault.healthy:
        await _vault_call(services, "ping", services.vault.ping())


# Every operation name the use cases time with vault_call and partner_call, and the
# failure outcomes a partner call can end in: their series exist from start-up at 0
# (Metrics.zero_known_series); tests/web/test_metrics_scrape.py keeps the lists complete.
VAULT_OPERATIONS = (
    "customer_key",
    "delete",
    "drop_customer",
    "erase",
    "get",
    "get_customer",
    "idempotency_begin",
    "idempotency_complete",
    "idempotency_partner",
    "list",
    "ping",
    "purge",
    "put",
    "put_customer",
    "sync_apply",
    "sync_customers",
    "sync_event",
    "sync_events",
    "sync_find",
    "sync_link",
    "sync_outbox",
    "sync_state",
    "touch",
)
PARTNER_OPERATIONS = (
    "count_subscriptions",
    "create_card",
    "create_customer",
    "create_sepa_debit",
    "delete_customer",
    "detach",
    "get_setup",
    "list_payment_methods",
    "setup",
)
PARTNER_FAILURES = (
    "partner_auth_failed",
    "partner_bad_reference",
    "partner_bad_response",
    "partner_budget_exhausted",
    "partner_busy",
    "partner_circuit_open",
    "partner_error",
    "partner_idempotency_error",
    "partner_mismatch",
    "partner_permission_denied",
    "partner_rate_limited",
    "partner_rejected_request",
    "partner_resource_missing",
    "partner_timeout",
    "partner_unavailable",
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
