"""Prometheus metrics, one registry per app so tests and several apps never share state.

Labels carry only bounded values: route templates, methods, status classes, partner,
operation, outcome, kind. Never a token, key, customer or card value.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

from proxy.infra.syncmetrics import SyncMetrics

# Loop lag worth alerting on starts at a few milliseconds: finer at the bottom.
_LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# Points around 1 s (the latency alert's threshold) and up to 30 s: a partner call may
# take its timeout plus retries, and a p99 pinned at the last bucket hides how bad it is.
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 5, 10,
    15, 20, 30,
)  # fmt: skip


def package_version() -> str:
    """The installed tokenproxy distribution's version ("unknown" when run from a bare tree)."""
    try:
        return importlib.metadata.version("tokenproxy")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# The label values the code emits, created at 0 at start (see Metrics.zero_known_series).
AUTH_FAILURE_REASONS = (
    "missing_key",
    "invalid_key",
    "missing_scope",
    "origin_not_allowed",
    "rate_limited",
)
ERASURE_OUTCOMES = ("complete", "incomplete", "already_erased", "not_found")
IDEMPOTENCY_OUTCOMES = ("started", "replayed", "resumed", "in_use", "reused", "erased")
DELETE_REASONS = ("delete", "erasure")
# The retention sweep's own audit event (it is not an EventType: written only on a gap).
RETENTION_PURGE_EVENT = "retention.purge"
CLOSE_REASONS = ("header_timeout", "connection_limit", "malformed_request")
# Vault errors an alert watches: the storage is unreachable, or a record fails authentication.
VAULT_ERROR_CLASSES = ("StorageUnavailable", "decryption_failed")


class Metrics:
    """Every metric the proxy exports (catalog: deploy/METRICS.md)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str | None = None,
        multiprocess_dir: Path | None = None,
    ) -> None:
        # No `_created` gauge beside every counter and histogram: it doubles the series
        # count and no dashboard or rule reads it (process-wide, idempotent).
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library
        self.registry = registry or CollectorRegistry()
        # Under several workers each process writes its values to files in this directory
        # (prometheus-client's multiprocess mode) and any worker's /metrics sums them all.
        self.multiprocess_dir = multiprocess_dir
        # Labelled children by (metric, label values): prometheus-client's .labels() takes a
        # lock and validates the values on every call, a measurable share of a request.
        # Bounded because every label value is from a bounded set (see the module docstring).
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "tokenproxy_http_requests",
            "HTTP requests answered, by route template, method, status class and client"
            " (the clients-file name; publishable keys as 'publishable', else 'anonymous').",
            ["route", "method", "status_class", "client"],
            registry=r,
        )
        self.request_duration = Histogram(
            "tokenproxy_http_request_duration_seconds",
            "Time from request start to response, by route template, method and client.",
            ["route", "method", "client"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.partner_requests = Counter(
            "tokenproxy_partner_requests",
            "Calls to the payment partner, by operation and outcome.",
            ["partner", "operation", "outcome"],
            registry=r,
        )
        self.partner_duration = Histogram(
            "tokenproxy_partner_request_duration_seconds",
            "Payment partner call latency.",
            ["partner", "operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.vault_duration = Histogram(
            "tokenproxy_vault_operation_duration_seconds",
            "Vault operation latency (encryption plus storage).",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.vault_errors = Counter(
            "tokenproxy_vault_errors",
            "Vault operations that failed, by operation and error class.",
            ["operation", "error"],
            registry=r,
        )
        self.decryption_failures = Counter(
            "tokenproxy_decryption_failures",
            "Records or data keys that failed authentication (tampering or key loss).",
            registry=r,
        )
        self.tokens_created = Counter(
            "tokenproxy_tokens_created",
            "Tokens created, by kind.",
            ["kind"],
            registry=r,
        )
        self.tokens_deleted = Counter(
            "tokenproxy_tokens_deleted",
            "Tokens deleted, by kind and reason (delete, erasure).",
            ["kind", "reason"],
            registry=r,
        )
        self.erasures = Counter(
            "tokenproxy_customer_erasures",
            "Customer erasures, by outcome (complete, incomplete, already_erased, not_found).",
            ["outcome"],
            registry=r,
        )
        self.retention_purged = Counter(
            "tokenproxy_retention_purged",
            "Tokens deleted by the retention sweeper, by kind (audit_event: audit events pruned).",
            ["kind"],
            registry=r,
        )
        self.usage_flushes = Counter(
            "tokenproxy_last_used_flushes",
            "Batched last-use writes, each one transaction for many resolved tokens.",
            registry=r,
        )
        self.auth_failures = Counter(
            "tokenproxy_auth_failures",
            "Requests refused for a missing or bad key (401) or a missing scope (403).",
            ["reason"],
            registry=r,
        )
        self.auth_throttled = Counter(
            "tokenproxy_auth_throttled",
            "Requests refused with 429 because their source address failed authentication"
            " too often (TOKENPROXY_AUTH_FAILURE_LIMIT per TOKENPROXY_AUTH_FAILURE_WINDOW).",
            registry=r,
        )
        self.wrong_listener = Counter(
            "tokenproxy_wrong_listener_requests",
            "Requests for an internal-only route that reached the public listener (answered 404).",
            ["route"],
            registry=r,
        )
        self.tls_reloads = Counter(
            "tokenproxy_tls_reloads",
            "Certificate reloads after TOKENPROXY_TLS_CERT_FILE or _KEY_FILE changed, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.tls_expiry = Gauge(
            "tokenproxy_tls_certificate_expiry_timestamp_seconds",
            "When the certificate the listeners present expires (Unix time), as last loaded.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.ready = Gauge(
            "tokenproxy_ready",
            "1 when /readyz answers 200 (started, key ring matches the vault), else 0.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.vault_up = Gauge(
            "tokenproxy_vault_up",
            "1 when the last readiness check reached the vault (every second), else 0.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.audit_failures = Counter(
            "tokenproxy_audit_write_failures",
            "Audit events that could not be written (the audited action was refused).",
            ["event_type"],
            registry=r,
        )
        self.rewrap_remaining = Gauge(
            "tokenproxy_rewrap_remaining",
            "Data keys not yet wrapped by the active key version (run `tokenproxy keys rewrap`).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.deks = Gauge(
            "tokenproxy_deks",
            "Data keys per key-encryption-key version.",
            ["key_version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.key_active_age = Gauge(
            "tokenproxy_key_active_age_seconds",
            "Seconds since the active key-encryption key version was created (rotation due?).",
            multiprocess_mode="livemax",
            registry=r,
        )
        # Resilience: partner retries, circuit breaker, idempotency.
        self.partner_attempts = Counter(
            "tokenproxy_partner_attempts",
            "Single attempts at the payment partner (retries included), by outcome.",
            ["partner", "operation", "outcome"],
            registry=r,
        )
        self.partner_retries = Counter(
            "tokenproxy_partner_retries",
            "Partner calls retried (same idempotency key), by the error that caused the retry.",
            ["partner", "operation", "reason"],
            registry=r,
        )
        self.partner_budget_exhausted = Counter(
            "tokenproxy_partner_budget_exhausted",
            "Partner calls refused (503, never sent) because the outbound budget of calls a"
            " second (TOKENPROXY_PARTNER_RATE) stayed spent for the whole short wait.",
            ["partner"],
            registry=r,
        )
        self.partner_circuit_state = Gauge(
            "tokenproxy_partner_circuit_state",
            "Partner circuit breaker: 0 closed, 1 open, 2 half-open.",
            ["partner"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.idempotency = Counter(
            "tokenproxy_idempotency_requests",
            "Requests with an Idempotency-Key, by outcome (started, replayed, resumed,"
            " in_use, reused, erased).",
            ["outcome"],
            registry=r,
        )
        self.partner_orphans = Counter(
            "tokenproxy_partner_orphans",
            "Partner objects created whose vault write failed on a request without an"
            " Idempotency-Key (no retry can link them; reconcile by the logged partner key).",
            ["partner"],
            registry=r,
        )
        self.connections_closed = Counter(
            "tokenproxy_connections_closed",
            "Connections the server closed on its own, by listener (api, ops) and reason"
            " (header_timeout, connection_limit, malformed_request).",
            ["listener", "reason"],
            registry=r,
        )
        self.clients_reloads = Counter(
            "tokenproxy_clients_reload",
            "Re-reads of a changed clients file, by outcome (success, failure: the last"
            " good clients stay in force).",
            ["outcome"],
            registry=r,
        )
        self.clients_reload_last_success = Gauge(
            "tokenproxy_clients_reload_last_success_timestamp_seconds",
            "Unix time the clients in force were read (start-up or the last good reload).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.clients_loaded = Gauge(
            "tokenproxy_clients_loaded",
            "Clients in force (each may hold a previous key during a rotation).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "tokenproxy_event_loop_lag_seconds",
            "How late the event loop woke a probe timer: time the loop spent blocked.",
            buckets=_LOOP_LAG_BUCKETS,
            registry=r,
        )
        # Partner events and reconciliation (proxy.infra.syncmetrics).
        self.sync = SyncMetrics(r)
        # A gauge rather than an Info: the multiprocess mode of several workers has no Info.
        Gauge(
            "tokenproxy_build_info",
            "Always 1; the label carries the running version.",
            ["version"],
            multiprocess_mode="livemax",
            registry=r,
        ).labels(version or package_version()).set(1)
        # Saturation: requests being handled, and the PostgreSQL pool (set at each scrape).
        self.in_flight = Gauge(
            "tokenproxy_http_requests_in_flight",
            "API requests being handled now.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.db_pool = Gauge(
            "tokenproxy_db_pool_connections",
            "PostgreSQL pool connections: state in_use (borrowed) or size (the pool's"
            " maximum, TOKENPROXY_DB_POOL_MAX); summed over workers.",
            ["state"],
            multiprocess_mode="livesum",
            registry=r,
        )
        # A custom registry has no default collectors: CPU, memory, open files, start time.
        ProcessCollector(registry=r)

    def zero_known_series(
        self,
        *,
        partner: str,
        partner_operations: Iterable[str],
        partner_failures: Iterable[str],
        vault_operations: Iterable[str],
        event_types: Iterable[str],
        kinds: Iterable[str],
    ) -> None:
        """Create every known label combination of the labelled counters at 0.

        A labelled series otherwise appears only at its first increment, and ``increase()``
        over a series that starts at 1 sees no increase: the first burst of audit write
        failures, vault errors or orphans would raise no alert. The caller names the values
        that live in other layers (operations, audit event types, token kinds).
        """
        kinds = list(kinds)
        outcomes = ["ok", *partner_failures]
        for operation in partner_operations:
            for outcome in outcomes:
                self.child(self.partner_requests, partner, operation, outcome)
                self.child(self.partner_attempts, partner, operation, outcome)
        for operation in vault_operations:
            for error in VAULT_ERROR_CLASSES:
                self.vault_errors.labels(operation, error)
        self.partner_orphans.labels(partner)
        self.partner_budget_exhausted.labels(partner)
        self.partner_circuit_state.labels(partner).set(0)
        for event_type in [*event_types, RETENTION_PURGE_EVENT]:
            self.audit_failures.labels(event_type)
        for kind in kinds:
            self.tokens_created.labels(kind)
            self.retention_purged.labels(kind)
            for reason in DELETE_REASONS:
                self.tokens_deleted.labels(kind, reason)
        self.retention_purged.labels("audit_event")
        for outcome in ERASURE_OUTCOMES:
            self.erasures.labels(outcome)
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(reason)
        for outcome in IDEMPOTENCY_OUTCOMES:
            self.child(self.idempotency, outcome)
        for outcome in ("success", "failure"):
            self.child(self.clients_reloads, outcome)
        for listener in ("api", "ops"):
            for reason in CLOSE_REASONS:
                self.child(self.connections_closed, listener, reason)

    def exposition_registry(self) -> CollectorRegistry:
        """What /metrics renders: this process's registry, or every worker's values summed.

        Counters and histograms add up over workers (a dead worker's counts stay); gauges
        take the minimum (ready) or maximum (the rest) over live workers.
        """
        if self.multiprocess_dir is None:
            return self.registry
        summed = CollectorRegistry()
        MultiProcessCollector(summed, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return summed

    def closer(self, listener: str) -> Callable[[str], None]:
        """A callback counting connections ``listener`` closes, by reason."""
        return lambda reason: self.child(self.connections_closed, listener, reason).inc()

    def child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """``metric.labels(*values)``, cached; values must come from a bounded set."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found
