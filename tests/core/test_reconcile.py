"""Reconciliation against localstripe, on SQLite and PostgreSQL: orphans, dangling tokens,
disagreeing fields, --fix, resuming, and the outbox that finds customer-less orphans."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, free_port

from pandetect import holds_pan
from proxy.core import partner_sync
from proxy.core.cards import tokenize_card
from proxy.core.reconcile import Options, reconcile
from proxy.core.services import Services
from proxy.core.tokens import read_token
from proxy.domain.errors import (
    NotFound,
    PartnerDeclined,
    PartnerError,
    ServiceUnavailable,
    TokenGone,
)
from proxy.domain.requests import parse_card_request
from proxy.infra.metrics import Metrics
from proxy.infra.syncstatus import refresh_reconcile_metrics
from proxy.partners.ports import CardUpdate, PartnerEvent
from proxy.partners.stripe import StripePartner
from tests.backends import RawRows
from tests.cards import VISA
from tests.proxy.test_cards_api import card_body
from tests.proxy.test_customers import DECLINED_ON_ATTACH
from vault import Vault

TODAY = date(2026, 1, 1)


async def save_card(services: Services, customer: str) -> dict[str, Any]:
    """Tokenize a card saved on ``customer``; its record's token, pm and partner customer."""
    created = await tokenize_card(services, card_body(customer_ref=customer), today=TODAY)
    record = await services.vault.get(created["token"])
    return {
        "token": record.token,
        "pm": record.partner_reference,
        "cus": record.details["partner_customer"],
    }


async def run(services: Services, **options: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Reconcile; the findings emitted and the result."""
    lines: list[dict[str, Any]] = []
    result = await reconcile(
        services,
        Options(actor="cli:test", rate=1000, kinds=("card",), **options),
        emit=lines.append,
    )
    return lines, result


def trail(vault: Vault) -> Any:
    """The audit trail's event types and resources."""
    return vault.backend.read_audit(limit=10_000)


async def test_agreeing_partner_and_vault_report_nothing(services: Services) -> None:
    """Two saved cards the partner holds as the vault does: no finding; the run is recorded."""
    await save_card(services, "rc-agree")
    await save_card(services, "rc-agree")
    lines, result = await run(services)
    assert [line for line in lines if "finding" in line] == []
    summary = result["summary"]
    assert result["complete"] is True
    assert summary["found"] == {"orphan": 0, "dangling": 0, "mismatch": 0}
    assert summary["customers"] >= 1
    stored = await services.vault.backend.sync_state_get("reconcile.last")  # type: ignore[attr-defined]
    assert stored is not None
    assert json.loads(stored)["finished_at"] == summary["finished_at"]


async def test_orphan_is_reported_then_detached_with_fix(
    services: Services, stripe_partner: StripePartner
) -> None:
    """A payment method attached at the partner that no token holds: reported, then detached."""
    saved = await save_card(services, "rc-orphan")
    extra = await stripe_partner.create_card(parse_card_request(card_body(VISA), today=TODAY))
    await stripe_partner.attach(extra.reference, saved["cus"])
    lines, result = await run(services, customer_ref="rc-orphan")
    assert {
        "finding": "orphan",
        "payment_method": extra.reference,
        "partner_customer": saved["cus"],
        "fixed": False,
    } in lines
    assert (await stripe_partner.get_payment_method(extra.reference)).customer == saved["cus"]  # type: ignore[union-attr]
    lines, result = await run(services, customer_ref="rc-orphan", fix=True)
    assert result["summary"]["fixed"]["orphan"] == 1
    assert (await stripe_partner.get_payment_method(extra.reference)).customer is None  # type: ignore[union-attr]
    events = [row.entry.event_type for row in await trail(services.vault)]
    assert events.count("reconcile.orphan_detach") == 1
    # The saved card was never touched.
    assert (await stripe_partner.get_payment_method(saved["pm"])).customer == saved["cus"]  # type: ignore[union-attr]


async def test_a_full_run_is_what_the_serving_proxy_exports(
    services: Services, stripe_partner: StripePartner
) -> None:
    """The last complete run's findings and finish time become the proxy's reconcile gauges."""
    saved = await save_card(services, "rc-gauges")
    extra = await stripe_partner.create_card(parse_card_request(card_body(VISA), today=TODAY))
    await stripe_partner.attach(extra.reference, saved["cus"])
    served = Metrics()
    await refresh_reconcile_metrics(served.sync, services.vault)
    assert served.registry.get_sample_value("tokenproxy_reconcile_last_run_timestamp_seconds") in (
        None,
        0,
    )
    _, result = await run(services)
    await refresh_reconcile_metrics(served.sync, services.vault)
    found = served.registry.get_sample_value("tokenproxy_reconcile_found", {"finding": "orphan"})
    assert found == result["summary"]["found"]["orphan"] == 1
    assert (
        served.registry.get_sample_value("tokenproxy_reconcile_last_run_timestamp_seconds")
        == result["summary"]["finished_at"]
    )


async def test_dangling_token_is_reported_then_marked_detached(
    services: Services, stripe_partner: StripePartner
) -> None:
    """A token whose payment method was detached at the partner: reported, then resolve 410."""
    saved = await save_card(services, "rc-dangling")
    assert await stripe_partner.detach(saved["pm"])
    lines, _ = await run(services, customer_ref="rc-dangling")
    dangling = [line for line in lines if line.get("finding") == "dangling"]
    assert dangling == [
        {
            "finding": "dangling",
            "token": saved["token"],
            "payment_method": saved["pm"],
            "partner_customer": saved["cus"],
            "reason": "detached",
            "fixed": False,
        }
    ]
    assert "detached_at" not in await read_token(services, saved["token"], resolve=False)
    _, result = await run(services, customer_ref="rc-dangling", fix=True)
    assert result["summary"]["fixed"]["dangling"] == 1
    assert "detached_at" in await read_token(services, saved["token"], resolve=False)
    with pytest.raises(TokenGone):
        await read_token(services, saved["token"], resolve=True)
    events = [(r.entry.event_type, r.entry.resource) for r in await trail(services.vault)]
    assert ("reconcile.dangling_detach", saved["token"]) in events
    # Fixed once: a later run finds nothing more to do.
    lines, result = await run(services, customer_ref="rc-dangling", fix=True)
    assert result["summary"]["found"]["dangling"] == 0


async def test_disagreeing_expiry_is_reported_and_left_alone(services: Services) -> None:
    """A field the vault and partner disagree on is a mismatch line; nothing changes."""
    saved = await save_card(services, "rc-mismatch")
    now = int(datetime.now(UTC).timestamp())
    update = PartnerEvent(
        id="evt_mismatch1",
        type="payment_method.updated",
        created=now,
        action="updated",
        payment_method=saved["pm"],
        card=CardUpdate(brand=None, last4=None, exp_month=None, exp_year=2040),
    )
    await partner_sync.receive_event(services, update)
    lines, result = await run(services, customer_ref="rc-mismatch", fix=True)
    assert {
        "finding": "mismatch",
        "token": saved["token"],
        "field": "exp_year",
        "vault": 2040,
        "partner": 2034,
        "fixed": False,
    } in lines
    assert result["summary"]["fixed"]["mismatch"] == 0
    assert (await read_token(services, saved["token"], resolve=False))["exp_year"] == 2040


async def test_unknown_customer_ref_is_not_found(services: Services) -> None:
    """--customer naming a customer the vault never saw is NotFound, not an empty report."""
    with pytest.raises(NotFound):
        await run(services, customer_ref="rc-never-seen")


class _Stop(Exception):
    """Interrupts a run part-way, as a killed job would."""


async def test_an_interrupted_run_resumes_after_the_last_customer(services: Services) -> None:
    """A run stopped after one customer resumes with the next, and its tally adds up."""
    for customer in ("rc-resume-a", "rc-resume-b", "rc-resume-c"):
        await save_card(services, customer)

    def stop(customers: int) -> None:
        raise _Stop

    with pytest.raises(_Stop):
        await reconcile(
            services,
            Options(actor="cli:test", rate=1000, kinds=("card",)),
            emit=lambda _: None,
            progress=stop,
        )
    lines, result = await run(services)
    assert lines[0] == {"resumed_after_customers": 1}
    assert result["summary"]["customers"] == 3
    # Complete: the next run starts from the beginning again.
    lines, result = await run(services)
    assert lines == []
    assert result["summary"]["customers"] == 3


async def test_outbox_finds_and_detaches_an_orphan_without_customer(
    services: Services, stripe_partner: StripePartner, raw_rows: RawRows, backend_name: str
) -> None:
    """A card created at the partner whose vault write failed: its outbox row finds it."""
    if backend_name == "sqlite":
        refuse = (
            "CREATE TRIGGER refuse BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        allow = "DROP TRIGGER refuse"
    else:
        refuse = "ALTER TABLE records ADD CONSTRAINT refuse CHECK (token = '')"
        allow = "ALTER TABLE records DROP CONSTRAINT refuse"
    await raw_rows.query(refuse)
    with pytest.raises(ServiceUnavailable):
        await tokenize_card(services, card_body(), today=TODAY)
    await raw_rows.query(allow)
    [(partner_key, reference)] = await raw_rows.query(
        "SELECT partner_key, reference FROM partner_outbox"
    )
    assert reference.startswith("pm_")
    lines, result = await run(services, outbox_grace=timedelta(0), fix=True)
    assert {
        "finding": "orphan",
        "partner_key": partner_key,
        "payment_method": reference,
        "fixed": True,
    } in lines
    assert await raw_rows.query("SELECT partner_key FROM partner_outbox") == []
    assert result["summary"]["fixed"]["orphan"] == 1


async def _tokenize_without_an_answer(services: Services) -> None:
    """A tokenize whose partner call gets no answer: it leaves an outbox row without an id."""
    nowhere = StripePartner(
        SANDBOX_API_KEY, api_base=f"http://127.0.0.1:{free_port()}", timeout=1, connect_timeout=0.2
    )
    try:
        with pytest.raises(PartnerError):
            await tokenize_card(replace(services, partner=nowhere), card_body(), today=TODAY)
    finally:
        await nowhere.close()


async def test_an_unresolved_legacy_key_that_looks_like_a_card_is_audited_as_its_digest(
    services: Services, raw_rows: RawRows
) -> None:
    """An outbox row whose hex key (as earlier versions made them) holds a Luhn-valid digit
    run is still settled: the trail gets the key's digest, the report the key itself."""
    await _tokenize_without_an_answer(services)
    legacy = "tp_" + "ab" + VISA.number + "cdef0123456789"
    assert holds_pan(legacy)
    await raw_rows.query("UPDATE partner_outbox SET partner_key = ?", (legacy,))
    lines, _ = await run(services, outbox_grace=timedelta(0), fix=True)
    assert {"finding": "orphan", "partner_key": legacy, "payment_method": None, "fixed": False} in (
        lines
    )
    digest = services.vault.audit.digest("partner_key", legacy)
    events = [(r.entry.event_type, r.entry.resource) for r in await trail(services.vault)]
    assert ("reconcile.outbox_unresolved", digest) in events
    assert await raw_rows.query("SELECT partner_key FROM partner_outbox") == []


async def test_finished_tokenizations_leave_no_outbox_row(
    services: Services, raw_rows: RawRows
) -> None:
    """A stored token and a declined card both settle their outbox row; reconcile finds nothing."""
    await tokenize_card(services, card_body(), today=TODAY)
    with pytest.raises(PartnerDeclined):
        await tokenize_card(
            services,
            card_body(number=DECLINED_ON_ATTACH, cvc="123", customer_ref="rc-declined"),
            today=TODAY,
        )
    assert await raw_rows.query("SELECT partner_key FROM partner_outbox") == []
    lines, _ = await run(services, outbox_grace=timedelta(0))
    assert [line for line in lines if "finding" in line] == []


async def test_a_call_with_no_answer_is_reported_once_by_its_partner_key(
    services: Services, raw_rows: RawRows
) -> None:
    """A partner call that got no answer may have created a card: reported, then dropped."""
    await _tokenize_without_an_answer(services)
    [(partner_key, reference)] = await raw_rows.query(
        "SELECT partner_key, reference FROM partner_outbox"
    )
    assert reference is None
    unresolved = {"finding": "orphan", "partner_key": partner_key, "payment_method": None}
    lines, _ = await run(services, outbox_grace=timedelta(0))
    assert {**unresolved, "fixed": False} in lines
    lines, _ = await run(services, outbox_grace=timedelta(0), fix=True)
    assert {**unresolved, "fixed": False} in lines
    events = [(r.entry.event_type, r.entry.resource) for r in await trail(services.vault)]
    assert ("reconcile.outbox_unresolved", partner_key) in events
    lines, _ = await run(services, outbox_grace=timedelta(0))
    assert [line for line in lines if "finding" in line] == []
