"""Prometheus metrics, one registry per app so tests and several apps never share state.

Labels carry only bounded values: route templates, methods, status classes, partner,
operation, outcome, kind. Never a token, key, customer or card value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Every metric the proxy exports (catalog: deploy/METRICS.md)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, version: str = "0") -> None:
        self.registry = registry or CollectorRegistry()
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
        self.auth_failures = Counter(
            "tokenproxy_auth_failures",
            "Requests refused for a missing or bad key (401) or a missing scope (403).",
            ["reason"],
            registry=r,
        )
        self.ready = Gauge(
            "tokenproxy_ready",
            "1 when the service is ready (vault reachable), else 0.",
            registry=r,
        )
        # Resilience (issue 6).
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
            registry=r,
        )
        self.idempotency = Counter(
            "tokenproxy_idempotency_requests",
            "Requests with an Idempotency-Key, by outcome (started, replayed, resumed,"
            " in_use, reused).",
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
        Info("tokenproxy_build", "Build information.", registry=r).info({"version": version})
