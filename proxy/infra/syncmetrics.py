"""Partner-sync metrics: partner events received, and what the last reconciliation found.

Reconciliation runs as its own process (a nightly job), so its figures are kept in the
vault and read back into gauges by the serving proxy at scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

# What reconciliation reports, as label values.
FINDINGS = ("orphan", "dangling", "mismatch")


class SyncMetrics:
    """Partner-sync metrics, part of :class:`proxy.infra.metrics.Metrics` (deploy/METRICS.md)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.events = Counter(
            "tokenproxy_partner_events",
            "Signed partner events received, by type and outcome (applied, stale, unchanged,"
            " unknown_payment_method, ignored, replayed).",
            ["type", "outcome"],
            registry=r,
        )
        self.events_rejected = Counter(
            "tokenproxy_partner_events_rejected",
            "Partner events refused with 400, by reason (missing, invalid, stale, malformed).",
            ["reason"],
            registry=r,
        )
        self.reconcile_last_run = Gauge(
            "tokenproxy_reconcile_last_run_timestamp_seconds",
            "Unix time the last complete reconciliation finished (0: never).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.reconcile_found = Gauge(
            "tokenproxy_reconcile_found",
            "What the last complete reconciliation found, by finding (orphan, dangling, mismatch).",
            ["finding"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.reconcile_fixed = Gauge(
            "tokenproxy_reconcile_fixed",
            "What the last complete reconciliation fixed (--fix), by finding.",
            ["finding"],
            multiprocess_mode="livemax",
            registry=r,
        )
