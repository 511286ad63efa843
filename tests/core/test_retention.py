"""Retention (Datalagring) through the service: read-time expiry, sweeps, the purge CLI,
and batched last-use tracking."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from tokenproxy_sandbox.launcher import Localstripe

from proxy.core import retention
from proxy.core.services import Services
from proxy.infra.metrics import Metrics
from proxy.infra.settings import Settings, SettingsError
from proxy.partners.stripe import StripePartner
from proxy.web.appkeys import SERVICES
from tests.backends import RawRows
from tests.cards import PARTNER_CARDS
from tests.conftest import RunningProxy, make_settings, running_proxy
from tests.core.test_invoices import invoice_body
from tests.core.test_reconcile import run, save_card
from tests.helpers import counted, create, metrics_text, resolve, rows
from tests.proxy.test_cards_api import card_body
from vault import Kind, LocalKekProvider, NewRecord, RetentionPolicy, Vault, iso, utcnow


def age(path: Path, token: str, days: int) -> None:
    """Make a record look ``days`` old and never used."""
    db = sqlite3.connect(path)
    db.execute(
        "UPDATE records SET created_at = ?, last_used_at = NULL WHERE token = ?",
        (iso(utcnow() - timedelta(days=days)), token),
    )
    db.commit()
    db.close()


@pytest.fixture
async def retaining_proxy(
    tmp_path: Path, keyring_path: Path, client_keys: dict[str, str], localstripe: Localstripe
) -> AsyncIterator[RunningProxy]:
    """The proxy keeping cards 30 days after last use and invoices 365 days, no sweeper."""
    settings = dataclasses.replace(
        make_settings(tmp_path, keyring_path, localstripe.base_url),
        retention_card_days=30,
        retention_invoice_days=365,
    )
    async with running_proxy(tmp_path, client_keys, settings) as running:
        yield running


async def test_expired_token_is_404_before_the_sweep(retaining_proxy: RunningProxy) -> None:
    """An expired token answers 404 to read and resolve and leaves listings, though still stored."""
    proxy = retaining_proxy
    old = await create(proxy, "/v1/cards", card_body(customer_ref="cus-ret"))
    # Another card: the same card saved twice for one customer answers one token.
    fresh = await create(proxy, "/v1/cards", card_body(PARTNER_CARDS[1], customer_ref="cus-ret"))
    age(proxy.vault_path, old["token"], 31)
    for client in ("orders", "billing"):
        status, body, _ = await proxy.request("GET", f"/v1/tokens/{old['token']}", client=client)
        assert status == 404
        assert body is not None
        assert body["error"]["code"] == "resource_missing"  # type: ignore[index]
    await resolve(proxy, fresh["token"])
    _, page, _ = await proxy.request("GET", "/v1/customers/cus-ret/tokens", client="orders")
    assert page is not None
    assert [v["token"] for v in page["data"]] == [fresh["token"]]  # type: ignore[union-attr]
    # Still held, so the access report lists it, flagged.
    _, report, _ = await proxy.request("GET", "/v1/customers/cus-ret/export", client="ops")
    assert report is not None
    expired = {r["token"]: r["expired"] for r in report["records"]}  # type: ignore[union-attr]
    assert expired == {old["token"]: True, fresh["token"]: False}
    assert rows(proxy.vault_path, "SELECT COUNT(*) FROM records") == [(2,)]


async def test_purge_deletes_expired_keeps_fresh_and_dry_run_changes_nothing(
    retaining_proxy: RunningProxy,
) -> None:
    """Dry run counts only; the sweep deletes exactly the expired tokens and counts them."""
    proxy = retaining_proxy
    services = proxy.app[SERVICES]
    old_card = await create(proxy, "/v1/cards", card_body())
    new_card = await create(proxy, "/v1/cards", card_body())
    old_inv = await create(proxy, "/v1/invoices", invoice_body(), "invoicer")
    new_inv = await create(proxy, "/v1/invoices", invoice_body(), "invoicer")
    age(proxy.vault_path, old_card["token"], 45)
    age(proxy.vault_path, old_inv["token"], 400)
    age(proxy.vault_path, new_inv["token"], 200)
    before = rows(proxy.vault_path, "SELECT token, created_at FROM records ORDER BY token")

    assert (await retention.purge(services, dry_run=True)).deleted == {"card": 1, "invoice": 1}
    assert rows(proxy.vault_path, "SELECT token, created_at FROM records ORDER BY token") == before
    assert not counted(await metrics_text(proxy), "tokenproxy_retention_purged_total")

    assert (await retention.purge(services)).deleted == {"card": 1, "invoice": 1}
    left = {t for (t,) in rows(proxy.vault_path, "SELECT token FROM records")}
    assert left == {new_card["token"], new_inv["token"]}
    text = await metrics_text(proxy)
    assert 'tokenproxy_retention_purged_total{kind="card"} 1.0' in text
    assert 'tokenproxy_retention_purged_total{kind="invoice"} 1.0' in text
    assert (await retention.purge(services)).deleted == {"card": 0, "invoice": 0}


async def test_sweep_reports_saved_payment_methods_left_attached(
    vault: Vault, raw_rows: RawRows
) -> None:
    """The sweep counts purged payment methods saved on a customer apart from the per-kind
    counts: in its result (dry run too), the audit event and a warning, never as a kind."""
    vault.retention = RetentionPolicy(card_days=30)
    saved = await vault.put(
        NewRecord(Kind.CARD, "stripe", "pm_sweep_saved", {"last4": "4242"}, customer_ref="cus-s")
    )
    single_use = await vault.put(NewRecord(Kind.CARD, "stripe", "pm_sweep_single", {}))
    for token in (saved.token, single_use.token):
        await raw_rows.query(
            "UPDATE records SET created_at = ?, last_used_at = NULL WHERE token = ?",
            (iso(utcnow() - timedelta(days=60)), token),
        )
    metrics = Metrics()

    with capture_logs() as logs:
        preview = await retention.sweep(vault, metrics, dry_run=True)
    assert (preview.deleted, preview.still_attached) == ({"card": 2}, 1)
    assert await raw_rows.count("records") == 2
    assert not [e for e in logs if e["event"] == "retention_purge_left_attached"]

    with capture_logs() as logs:
        purged = await retention.sweep(vault, metrics, actor="ops")
    assert (purged.deleted, purged.still_attached) == ({"card": 2}, 1)
    assert await raw_rows.count("records") == 0
    warnings = [e for e in logs if e["event"] == "retention_purge_left_attached"]
    assert [(e["log_level"], e["still_attached"]) for e in warnings] == [("warning", 1)]
    (event,) = [e for e in await vault.audit.events() if e.entry.event_type == "retention.purge"]
    assert json.loads(event.entry.detail) == {"card": 2, "still_attached": 1}
    purged_kinds = {
        sample.labels["kind"]
        for family in metrics.registry.collect()
        if family.name == "tokenproxy_retention_purged"
        for sample in family.samples
    }
    assert purged_kinds == {"card"}
    assert (
        metrics.registry.get_sample_value("tokenproxy_retention_purged_total", {"kind": "card"})
        == 2
    )


async def test_a_purged_saved_card_stays_attached_until_reconcile_detaches_it(
    vault: Vault, raw_rows: RawRows, stripe_partner: StripePartner
) -> None:
    """The purge leaves a saved card's payment method attached at the partner and counts
    it; reconcile then reports it as an orphan, and with fix detaches it."""
    services = Services(vault=vault, partner=stripe_partner, metrics=Metrics())
    saved = await save_card(services, "ret-attached")
    vault.retention = RetentionPolicy(card_days=30)
    await raw_rows.query(
        "UPDATE records SET created_at = ?, last_used_at = NULL WHERE token = ?",
        (iso(utcnow() - timedelta(days=60)), saved["token"]),
    )

    purged = await retention.purge(services)
    assert (purged.deleted, purged.still_attached) == ({"card": 1}, 1)
    method = await stripe_partner.get_payment_method(saved["pm"])
    assert method is not None
    assert method.customer == saved["cus"]

    lines, _ = await run(services, customer_ref="ret-attached", fix=True)
    orphan = {"finding": "orphan", "payment_method": saved["pm"], "partner_customer": saved["cus"]}
    assert {**orphan, "fixed": True} in lines
    method = await stripe_partner.get_payment_method(saved["pm"])
    assert method is not None
    assert method.customer is None


async def test_resolving_marks_use_in_batches(retaining_proxy: RunningProxy) -> None:
    """Resolves mark last use in memory; one flush writes them; reads by `read` do not count."""
    proxy = retaining_proxy
    services = proxy.app[SERVICES]
    a = await create(proxy, "/v1/cards", card_body())
    b = await create(proxy, "/v1/cards", card_body())
    for _ in range(3):
        await resolve(proxy, a["token"])
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{b['token']}", client="orders")
    assert status == 200
    assert rows(
        proxy.vault_path, "SELECT COUNT(*) FROM records WHERE last_used_at IS NOT NULL"
    ) == [(0,)]
    assert await retention.flush_usage(services) == 1
    used = rows(proxy.vault_path, "SELECT token FROM records WHERE last_used_at IS NOT NULL")
    assert used == [(a["token"],)]
    # A token used within the hour costs no further write.
    await resolve(proxy, a["token"])
    assert await retention.flush_usage(services) == 0
    assert "tokenproxy_last_used_flushes_total 1.0" in await metrics_text(proxy)


async def test_serve_sweeps_and_flushes_in_the_background(
    tmp_path: Path, keyring_path: Path, client_keys: dict[str, str], localstripe: Localstripe
) -> None:
    """With TOKENPROXY_PURGE_INTERVAL set, expired tokens vanish and last use is written."""
    settings = dataclasses.replace(
        make_settings(tmp_path, keyring_path, localstripe.base_url),
        retention_card_days=30,
        purge_interval=1,
        last_used_flush_interval=0.2,
    )
    async with running_proxy(tmp_path, client_keys, settings) as proxy:
        old = await create(proxy, "/v1/cards", card_body())
        kept = await create(proxy, "/v1/cards", card_body())
        age(proxy.vault_path, old["token"], 60)
        await resolve(proxy, kept["token"])
        for _ in range(100):
            left = rows(proxy.vault_path, "SELECT token, last_used_at FROM records")
            if len(left) == 1 and left[0][1] is not None:
                break
            await asyncio.sleep(0.1)
        assert [t for t, _ in left] == [kept["token"]]
        assert left[0][1] is not None


def _purge(
    tmp_path: Path, keyring: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "purge", *args],
        env={
            **os.environ,
            "TOKENPROXY_VAULT_URL": f"sqlite:///{tmp_path / 'vault.db'}",
            "TOKENPROXY_KEYRING": str(keyring),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_purge_cli(tmp_path: Path, keyring_path: Path) -> None:
    """`tokenproxy purge --dry-run` counts without deleting; `purge` deletes and writes metrics."""
    vault = await Vault.open(
        f"sqlite:///{tmp_path / 'vault.db'}", LocalKekProvider.from_file(keyring_path)
    )
    made = [
        await vault.put(
            NewRecord(Kind.CARD, "stripe", f"pm_cli{i}", {"last4": "4242"}, customer_ref=customer)
        )
        for i, customer in enumerate(["cus-cli", None, None])
    ]
    await vault.close()
    age(tmp_path / "vault.db", made[0].token, 100)
    age(tmp_path / "vault.db", made[1].token, 100)

    result = await asyncio.to_thread(_purge, tmp_path, keyring_path)
    assert result.returncode == 0
    assert "every token kind is kept" in result.stdout

    env = {"TOKENPROXY_RETENTION_CARD_DAYS": "90"}
    result = await asyncio.to_thread(_purge, tmp_path, keyring_path, "--dry-run", **env)
    assert result.returncode == 0, result.stderr
    summary, attached = result.stdout.strip().splitlines()
    assert summary == "would purge: audit_event=0 card=2"
    assert attached.startswith("1 of these payment methods would stay attached")
    assert rows(tmp_path / "vault.db", "SELECT COUNT(*) FROM records") == [(3,)]

    prom = tmp_path / "purge.prom"
    result = await asyncio.to_thread(
        _purge, tmp_path, keyring_path, "--metrics-file", str(prom), **env
    )
    assert result.returncode == 0, result.stderr
    # The run's own log lines (a warning among them) share stdout with the summary.
    summary, attached = result.stdout.strip().splitlines()[-2:]
    assert summary == "purged: audit_event=0 card=2"
    assert attached.startswith("1 of these payment methods stay attached")
    assert rows(tmp_path / "vault.db", "SELECT token FROM records") == [(made[2].token,)]
    assert 'tokenproxy_retention_purged_total{kind="card"} 2.0' in prom.read_text()


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"TOKENPROXY_RETENTION_CARD_DAYS": "-1"}, "TOKENPROXY_RETENTION_CARD_DAYS"),
        ({"TOKENPROXY_RETENTION_INVOICE_DAYS": "ten"}, "TOKENPROXY_RETENTION_INVOICE_DAYS"),
        ({"TOKENPROXY_PURGE_INTERVAL": "0.5"}, "TOKENPROXY_PURGE_INTERVAL"),
        ({"TOKENPROXY_LAST_USED_FLUSH_INTERVAL": "0"}, "TOKENPROXY_LAST_USED_FLUSH_INTERVAL"),
    ],
)
def test_bad_retention_settings_name_themselves(env: dict[str, str], name: str) -> None:
    """A bad retention setting stops start-up with a message naming it."""
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1", **env})


def test_retention_settings_build_the_policy() -> None:
    """The three day counts become the vault's policy; absent means keep forever."""
    settings = Settings.from_env(
        {
            "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1",
            "TOKENPROXY_RETENTION_CARD_DAYS": "180",
            "TOKENPROXY_RETENTION_INVOICE_DAYS": "2555",
            "TOKENPROXY_PURGE_INTERVAL": "3600",
        }
    )
    policy = settings.retention_policy()
    assert (policy.card_days, policy.bank_days, policy.invoice_days) == (180, 0, 2555)
    assert settings.purge_interval == 3600


async def old_audit_events(path: Path, keyring: Path, ages_in_days: list[int]) -> None:
    """Append resolve events dated ``ages_in_days`` ago to the vault at ``path``."""
    vault = await Vault.open(f"sqlite:///{path}", LocalKekProvider.from_file(keyring))
    try:
        for days in ages_in_days:
            await vault.audit.append(
                "token.resolve",
                outcome=True,
                actor="billing",
                origin="127.0.0.1",
                occurred_at=datetime.now(UTC) - timedelta(days=days),
            )
    finally:
        await vault.close()


async def test_purge_cli_prunes_the_audit_trail_behind_a_checkpoint(
    tmp_path: Path, keyring_path: Path
) -> None:
    """`purge` deletes audit events past TOKENPROXY_AUDIT_RETENTION_DAYS (default 365) behind
    a checkpoint, and `audit verify` proves the rest from it."""
    await old_audit_events(tmp_path / "vault.db", keyring_path, [900, 400, 366, 300, 1])
    env = {"TOKENPROXY_AUDIT_RETENTION_DAYS": "365"}
    result = await asyncio.to_thread(_purge, tmp_path, keyring_path, "--dry-run", **env)
    assert result.stdout.strip().endswith("would purge: audit_event=3"), result.stderr
    result = await asyncio.to_thread(_purge, tmp_path, keyring_path)
    assert result.stdout.strip().endswith("purged: audit_event=3"), result.stderr
    kept = rows(tmp_path / "vault.db", "SELECT seq, event_type FROM audit_events ORDER BY seq")
    assert kept == [
        (4, "token.resolve"),
        (5, "token.resolve"),
        (6, "audit.checkpoint"),
        (7, "retention.purge"),
    ]
    verify = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proxy", "audit", "verify"],
        env={
            **os.environ,
            "TOKENPROXY_VAULT_URL": f"sqlite:///{tmp_path / 'vault.db'}",
            "TOKENPROXY_KEYRING": str(keyring_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert "4 events from event 4" in verify.stdout
    assert "checkpoint event 6" in verify.stdout
    result = await asyncio.to_thread(_purge, tmp_path, keyring_path, "--dry-run")
    assert result.stdout.strip().endswith("would purge: audit_event=0")


async def test_sweeper_prunes_audit_events_past_retention(retaining_proxy: RunningProxy) -> None:
    """The retention sweep prunes audit events older than the audit retention, counted."""
    proxy = retaining_proxy
    services = proxy.app[SERVICES]
    await services.vault.audit.append(
        "token.resolve",
        outcome=True,
        actor="billing",
        origin=None,
        occurred_at=datetime.now(UTC) - timedelta(days=400),
    )
    counts = (await retention.purge(services, audit_retention_days=365)).deleted
    assert counts["audit_event"] == 1
    assert (await services.vault.audit.verify()).ok
    assert 'tokenproxy_retention_purged_total{kind="audit_event"} 1.0' in await metrics_text(proxy)
