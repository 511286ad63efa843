"""Prometheus metrics, one registry per app so tests and several apps never share state.

Labels carry only bounded values: route templates, methods, status classes, partner,
operation, outcome, kind. Never a token, key, customer or card value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

# Loop lag worth alerting on starts at a few milliseconds: finer at the bottom.
_LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Every metric the proxy exports (catalog: deploy/METRICS.md)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str = "0",
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
            "HTTP requests answered, by route template, method and status class.",
            ["route", "method", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            "tokenproxy_http_request_duration_seconds",
            "Time from request start to response, by route template and method.",
            ["route", "method"],
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
        self.ready = Gauge(
            "tokenproxy_ready",
            "1 when the service is ready (vault reachable), else 0.",
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
        # When the key gauges were last read from the vault (see proxy.infra.keystatus).
        self.key_metrics_at = float("-inf")
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
        Info("tokenproxy_build", "Build information.", registry=r).info({"version": version})

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
