"""What a scrape of /metrics sees: known series from the start, saturation, no query per scrape."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
from pathlib import Path

import pytest

from proxy.core.services import PARTNER_FAILURES, PARTNER_OPERATIONS, VAULT_OPERATIONS
from proxy.infra.keystatus import refresh_key_metrics
from proxy.web.appkeys import METRICS, SERVICES
from tests.conftest import SHOP, RunningProxy, add_shop_key
from tests.helpers import metrics_text
from tests.proxy.test_cards_api import card_body, tokenize

PROXY = Path(__file__).resolve().parents[2] / "proxy"


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the series ``name{labels}`` in exposition text, or None if absent."""
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        metric, _, rest = series.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'([a-z_]+)="([^"]*)"', rest))
        if found == labels:
            return float(value)
    return None


@pytest.fixture
def client_keys(client_keys: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The standard clients plus a publishable key for the shop."""
    return add_shop_key(client_keys, tmp_path)


@pytest.fixture
def proxy_env() -> dict[str, str]:
    """The shop's origin allowed for the publishable key."""
    return {"TOKENPROXY_CORS_ORIGINS": SHOP}


async def test_labelled_counters_exist_at_zero_right_after_start(proxy: RunningProxy) -> None:
    """Before any traffic, alert-relevant series are served at 0, so increase() sees the first."""
    text = await metrics_text(proxy)
    assert sample(text, "tokenproxy_audit_write_failures_total", event_type="token.resolve") == 0
    assert sample(text, "tokenproxy_audit_write_failures_total", event_type="auth.failure") == 0
    assert sample(text, "tokenproxy_audit_write_failures_total", event_type="retention.purge") == 0
    for operation in VAULT_OPERATIONS:
        for error in ("StorageUnavailable", "decryption_failed"):
            got = sample(text, "tokenproxy_vault_errors_total", operation=operation, error=error)
            assert got == 0, (operation, error)
    assert sample(text, "tokenproxy_partner_orphans_total", partner="stripe") == 0
    assert sample(text, "tokenproxy_customer_erasures_total", outcome="incomplete") == 0
    for operation in PARTNER_OPERATIONS:
        for outcome in ("ok", "partner_timeout", "partner_unavailable"):
            got = sample(
                text,
                "tokenproxy_partner_requests_total",
                partner="stripe",
                operation=operation,
                outcome=outcome,
            )
            assert got == 0, (operation, outcome)
    assert sample(text, "tokenproxy_partner_circuit_state", partner="stripe") == 0
    assert sample(text, "tokenproxy_auth_failures_total", reason="invalid_key") == 0
    assert sample(text, "tokenproxy_tokens_deleted_total", kind="card", reason="erasure") == 0
    assert sample(text, "tokenproxy_idempotency_requests_total", outcome="reused") == 0
    assert (
        sample(text, "tokenproxy_connections_closed_total", listener="api", reason="header_timeout")
        == 0
    )


def test_operation_lists_name_every_operation_the_code_times() -> None:
    """Each operation given to vault_call or partner_call, and each partner failure, is listed.

    Failures are what the partner adapter and its retry layer raise (an outcome of a call);
    a use case's own partner_* refusals (a mode mismatch, a deleted customer) are not.
    """
    source = "\n".join(p.read_text() for p in PROXY.rglob("*.py"))
    vault = set(re.findall(r'vault_call\(\s*[\w.]+,\s*"(\w+)"', source))
    partner = set(re.findall(r'(?:partner_call|_quietly)\(\s*[\w.]+,\s*"(\w+)"', source))
    adapter = "\n".join(p.read_text() for p in (PROXY / "partners").rglob("*.py"))
    codes = set(re.findall(r'(?:code=|default_code = )"(partner_[a-z_]+)"', adapter))
    codes |= set(
        re.findall(
            r'default_code = "(partner_[a-z_]+)"', (PROXY / "domain" / "errors.py").read_text()
        )
    )
    assert vault
    assert partner
    assert vault <= set(VAULT_OPERATIONS)
    assert partner <= set(PARTNER_OPERATIONS)
    assert {"partner_timeout", "partner_circuit_open"} <= codes
    assert codes <= set(PARTNER_FAILURES)


async def test_a_scrape_reads_the_key_counts_without_querying(proxy: RunningProxy) -> None:
    """Tokens written after the last background refresh show only at the next refresh."""
    metrics, vault = proxy.app[METRICS], proxy.app[SERVICES].vault
    await tokenize(proxy, card_body())
    await refresh_key_metrics(metrics, vault)
    assert sample(await metrics_text(proxy), "tokenproxy_deks", key_version="1") == 1
    await tokenize(proxy, card_body())
    for _ in range(3):
        assert sample(await metrics_text(proxy), "tokenproxy_deks", key_version="1") == 1
    await refresh_key_metrics(metrics, vault)
    assert sample(await metrics_text(proxy), "tokenproxy_deks", key_version="1") == 2


async def test_request_metrics_carry_the_client(proxy: RunningProxy) -> None:
    """Secret keys by client name; publishable keys as one value; no key as anonymous."""
    await tokenize(proxy, card_body())
    await proxy.request("POST", "/v1/cards", client="shop", json={}, headers={"Origin": SHOP})
    await proxy.request("GET", "/v1/tokens/vtok_card_x")
    text = await metrics_text(proxy)
    route, tokens = "/v1/cards", "/v1/tokens/{token}"
    labels = {"route": route, "method": "POST"}
    assert (
        sample(
            text, "tokenproxy_http_requests_total", **labels, status_class="2xx", client="checkout"
        )
        == 1
    )
    assert (
        sample(
            text,
            "tokenproxy_http_requests_total",
            **labels,
            status_class="4xx",
            client="publishable",
        )
        == 1
    )
    assert (
        sample(
            text,
            "tokenproxy_http_requests_total",
            route=tokens,
            method="GET",
            status_class="4xx",
            client="anonymous",
        )
        == 1
    )
    assert (
        sample(text, "tokenproxy_http_request_duration_seconds_count", **labels, client="checkout")
        == 1
    )
    assert 'client="shop"' not in text


async def test_buckets_process_metrics_version_and_key_age(proxy: RunningProxy) -> None:
    """Buckets reach 30 s with points near 1 s; process_*, the package version, the key's age."""
    await tokenize(proxy, card_body())
    text = await metrics_text(proxy)
    buckets = {
        float(le)
        for le in re.findall(
            r'^tokenproxy_partner_request_duration_seconds_bucket\{[^}]*le="([^"+]+)"', text, re.M
        )
    }
    assert {0.5, 0.75, 1.0, 1.5, 2.0, 10.0, 15.0, 20.0, 30.0} <= buckets
    assert sample(text, "process_cpu_seconds_total") is not None
    assert sample(text, "process_resident_memory_bytes") is not None
    version = importlib.metadata.version("tokenproxy")
    assert sample(text, "tokenproxy_build_info", version=version) == 1
    age = sample(text, "tokenproxy_key_active_age_seconds")
    assert age is not None
    assert age >= 0


async def test_in_flight_counts_a_request_being_handled(proxy: RunningProxy) -> None:
    """A request whose body is still arriving is in flight; once answered it is not."""
    assert sample(await metrics_text(proxy), "tokenproxy_http_requests_in_flight") == 0
    host, port = proxy.base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/cards HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {proxy.keys['checkout']}\r\n".encode()
            + b"Content-Length: 4\r\n\r\n{"
        )
        await writer.drain()
        for _ in range(200):
            if sample(await metrics_text(proxy), "tokenproxy_http_requests_in_flight") == 1:
                break
            await asyncio.sleep(0.02)
        assert sample(await metrics_text(proxy), "tokenproxy_http_requests_in_flight") == 1
        writer.write(b"}  ")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 400")
    finally:
        writer.close()
    for _ in range(200):
        if sample(await metrics_text(proxy), "tokenproxy_http_requests_in_flight") == 0:
            break
        await asyncio.sleep(0.02)
    assert sample(await metrics_text(proxy), "tokenproxy_http_requests_in_flight") == 0


@pytest.fixture
def pg_proxy_env() -> dict[str, str]:
    """A pool of at most three connections for the `pg_proxy` fixture."""
    return {"TOKENPROXY_DB_POOL_MAX": "3"}


@pytest.mark.postgres
async def test_pool_gauges_show_connections_borrowed_and_the_maximum(
    pg_proxy: RunningProxy,
) -> None:
    """The pool's maximum and borrowed connections are served; a held connection is in use."""
    await tokenize(pg_proxy, card_body())
    text = await metrics_text(pg_proxy)
    assert sample(text, "tokenproxy_db_pool_connections", state="size") == 3
    assert sample(text, "tokenproxy_db_pool_connections", state="in_use") == 0
    backend = pg_proxy.app[SERVICES].vault.backend
    pool = await backend._get_pool()  # type: ignore[attr-defined]
    async with pool.acquire():
        text = await metrics_text(pg_proxy)
        assert sample(text, "tokenproxy_db_pool_connections", state="in_use") == 1
