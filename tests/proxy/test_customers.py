"""Customers end to end against localstripe: partner customers, attach, listing, access
report, erasure (crypto-shredding included) and single-token deletion."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe, free_port

from proxy.partners.ports import Partner
from proxy.partners.resilience import CircuitBreaker, ResilientPartner, RetryPolicy
from proxy.partners.stripe import StripePartner
from proxy.web.appkeys import METRICS, SERVICES
from tests.cards import PARTNER_CARDS, VISA, luhn_complete
from tests.conftest import RunningProxy
from tests.core.test_invoices import invoice_body
from tests.helpers import (
    bank_body,
    create,
    db_bytes,
    metrics_text,
    partner_get,
    resolve,
    rows,
)
from tests.ibans import VALID
from tests.proxy.test_cards_api import card_body

# localstripe refuses to attach this test card to a customer.
DECLINED_ON_ATTACH = "4000000000000002"


async def add_card(proxy: RunningProxy, customer: str, card: Any = VISA) -> dict[str, Any]:
    """Tokenize a card for ``customer``."""
    return await create(proxy, "/v1/cards", card_body(card, customer_ref=customer))


async def pm_of(proxy: RunningProxy, token: str) -> str:
    """The partner reference behind a token."""
    return str((await resolve(proxy, token))["partner_reference"])


async def partner_customer_count(localstripe: Localstripe) -> int:
    """How many customers localstripe holds."""
    _, listing = await partner_get(localstripe, "/v1/customers?limit=100")
    return len(listing["data"])


@pytest.fixture
async def dead_partner(proxy: RunningProxy) -> AsyncIterator[Partner]:
    """A Stripe adapter pointed at a loopback port where nothing listens, behind the retry
    layer the app puts in front of every partner (with a breaker that stays closed)."""
    partner = StripePartner(
        SANDBOX_API_KEY,
        api_base=f"http://127.0.0.1:{free_port()}",
        timeout=2,
        connect_timeout=0.5,
    )
    yield ResilientPartner(
        partner,
        policy=RetryPolicy(
            max_retries=proxy.settings.partner_max_retries, backoff_base=0.01, backoff_max=0.02
        ),
        breaker=CircuitBreaker(failures=100),
        metrics=proxy.app[METRICS],
    )
    await partner.close()


async def test_customer_created_on_first_use_and_reused(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """A card and a bank account of one customer attach to the same partner customer."""
    card = await add_card(proxy, "cus-reuse")
    bank = await create(proxy, "/v1/bank-accounts", bank_body(customer_ref="cus-reuse"))
    _, card_pm = await partner_get(
        localstripe, f"/v1/payment_methods/{await pm_of(proxy, card['token'])}"
    )
    _, bank_pm = await partner_get(
        localstripe, f"/v1/payment_methods/{await pm_of(proxy, bank['token'])}"
    )
    assert card_pm["customer"].startswith("cus_")
    assert card_pm["customer"] == bank_pm["customer"]
    assert rows(proxy.vault_path, "SELECT COUNT(*) FROM customers") == [(1,)]
    # The partner's customer id is sealed, not in the file.
    assert card_pm["customer"].encode() not in db_bytes(proxy.vault_path)


async def test_concurrent_first_requests_create_one_partner_customer(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """Four simultaneous first tokenizations for a new customer share one partner customer."""
    before = await partner_customer_count(localstripe)
    created = await asyncio.gather(
        *(add_card(proxy, "cus-concurrent", card) for card in PARTNER_CARDS[:4])
    )
    customers = set()
    for item in created:
        _, pm = await partner_get(
            localstripe, f"/v1/payment_methods/{await pm_of(proxy, item['token'])}"
        )
        customers.add(pm["customer"])
    assert len(customers) == 1
    assert await partner_customer_count(localstripe) == before + 1
    assert rows(proxy.vault_path, "SELECT COUNT(*) FROM customers") == [(1,)]
    assert len(proxy.app[SERVICES].locks) == 0


async def test_declined_attach_for_new_customer_leaves_nothing(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """402 card_declined; no record, mapping or key row, and the partner customer is deleted."""
    before = await partner_customer_count(localstripe)
    status, body, _ = await proxy.request(
        "POST",
        "/v1/cards",
        client="checkout",
        json=card_body(number=DECLINED_ON_ATTACH, cvc="123", customer_ref="cus-declined"),
    )
    assert status == 402
    assert body is not None
    assert body["error"]["code"] == "card_declined"  # type: ignore[index]
    assert body["error"]["type"] == "card_error"  # type: ignore[index]
    for table in ("records", "customers", "deks"):
        assert rows(proxy.vault_path, f"SELECT COUNT(*) FROM {table}") == [(0,)]  # noqa: S608
    assert await partner_customer_count(localstripe) == before
    assert (
        'tokenproxy_partner_requests_total{operation="setup",outcome="card_declined",'
        'partner="stripe"} 1.0' in await metrics_text(proxy)
    )


async def test_declined_attach_for_known_customer_keeps_the_rest(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """A refused second card adds nothing and leaves the customer's first card attached."""
    first = await add_card(proxy, "cus-known")
    status, _, _ = await proxy.request(
        "POST",
        "/v1/cards",
        client="checkout",
        json=card_body(number=DECLINED_ON_ATTACH, cvc="123", customer_ref="cus-known"),
    )
    assert status == 402
    assert rows(proxy.vault_path, "SELECT COUNT(*) FROM records") == [(1,)]
    assert rows(proxy.vault_path, "SELECT COUNT(*) FROM customers") == [(1,)]
    _, pm = await partner_get(
        localstripe, f"/v1/payment_methods/{await pm_of(proxy, first['token'])}"
    )
    assert pm["customer"].startswith("cus_")


async def test_listing_pages_masked_views(proxy: RunningProxy) -> None:
    """limit/starting_after page through every token of one customer, masked views only."""
    made = [await add_card(proxy, "cus-list", card) for card in PARTNER_CARDS[:3]]
    made.append(await create(proxy, "/v1/bank-accounts", bank_body(customer_ref="cus-list")))
    made += [
        await create(proxy, "/v1/invoices", invoice_body(customer_ref="cus-list"), "invoicer")
        for _ in range(2)
    ]
    await add_card(proxy, "cus-someone-else")
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        query = "?limit=2" + (f"&starting_after={cursor}" if cursor else "")
        status, page, _ = await proxy.request(
            "GET", f"/v1/customers/cus-list/tokens{query}", client="orders"
        )
        assert status == 200, page
        assert page is not None
        pages += 1
        assert len(page["data"]) <= 2  # type: ignore[arg-type]
        seen += page["data"]  # type: ignore[arg-type]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert pages == 3
    assert [v["token"] for v in seen] == [m["token"] for m in made]
    for view in seen:
        assert "partner_reference" not in view
        assert view["customer_ref"] == "cus-list"
    assert {v["kind"] for v in seen} == {"card", "bank", "invoice"}


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("?limit=0", "invalid_limit"),
        ("?limit=101", "invalid_limit"),
        ("?limit=ten", "invalid_limit"),
        ("?starting_after=bm90LWEtY3Vyc29y", "invalid_cursor"),
        ("?starting_after=%%%", "invalid_cursor"),
    ],
)
async def test_listing_rejects_bad_paging(proxy: RunningProxy, query: str, code: str) -> None:
    """Out-of-range limits and foreign cursors are 400s."""
    status, body, _ = await proxy.request(
        "GET", f"/v1/customers/cus-x/tokens{query}", client="orders"
    )
    assert status == 400
    assert body is not None
    assert body["error"]["code"] == code  # type: ignore[index]


async def test_listing_scope_and_unknown_customer(proxy: RunningProxy) -> None:
    """Listing needs read; an unknown customer is an empty list; a bad ref is 422."""
    status, _, _ = await proxy.request("GET", "/v1/customers/cus-x/tokens", client="checkout")
    assert status == 403
    status, page, _ = await proxy.request("GET", "/v1/customers/cus-none/tokens", client="orders")
    assert status == 200
    assert page == {
        "object": "list",
        "customer_ref": "cus-none",
        "data": [],
        "has_more": False,
        "next_cursor": None,
    }
    status, body, _ = await proxy.request(
        "GET", f"/v1/customers/{VISA.number}/tokens", client="orders"
    )
    assert status == 422
    assert VISA.number not in str(body)


async def test_export_is_a_complete_access_report(proxy: RunningProxy) -> None:
    """The admin export lists every record and what each partner holds, without its ids."""
    card = await add_card(proxy, "cus-export")
    bank = await create(proxy, "/v1/bank-accounts", bank_body(customer_ref="cus-export"))
    inv = await create(
        proxy,
        "/v1/invoices",
        invoice_body(customer_ref="cus-export", partner="stripe", partner_reference="in_1Exp"),
        "invoicer",
    )
    for client in ("orders", "billing", "eraser"):
        status, _, _ = await proxy.request("GET", "/v1/customers/cus-export/export", client=client)
        assert status == 403
    status, report, _ = await proxy.request("GET", "/v1/customers/cus-export/export", client="ops")
    assert status == 200
    assert report is not None
    assert report["counts"] == {"card": 1, "bank": 1, "invoice": 1}
    by_token = {r["token"]: r for r in report["records"]}  # type: ignore[union-attr]
    assert set(by_token) == {card["token"], bank["token"], inv["token"]}
    assert by_token[card["token"]]["partner"] == "stripe"
    assert by_token[bank["token"]]["masked"] == VALID[0].masked
    assert by_token[inv["token"]]["invoice_number"] == "F-2025-0042"
    assert all(r["expired"] is False for r in by_token.values())
    assert report["partner_customer"]["partner"] == "stripe"  # type: ignore[index]
    held = report["held_by_partner"]
    assert {h["object"] for h in held} == {"payment_method", "customer", "invoice"}  # type: ignore[union-attr]
    assert any("IBAN" in h["holds"] for h in held)  # type: ignore[union-attr]
    summaries = {h.get("token"): h["summary"] for h in held}  # type: ignore[union-attr]
    assert summaries[card["token"]] == f"stripe: payment method for visa card …{card['last4']}"
    assert summaries[None] == "stripe: customer object"
    assert VALID[0].iban not in str(report)
    assert VISA.number not in str(report)


async def test_no_partner_id_leaves_without_a_resolve_event(proxy: RunningProxy) -> None:
    """Only an audited resolve hands out pm_/cus_/mandate/invoice ids; every other answer
    about a customer (create, read, list, export, delete, erase) holds none of them."""
    card = await add_card(proxy, "cus-ids")
    bank = await create(proxy, "/v1/bank-accounts", bank_body(customer_ref="cus-ids"))
    await create(
        proxy,
        "/v1/invoices",
        invoice_body(customer_ref="cus-ids", partner="stripe", partner_reference="in_1Ids"),
        "invoicer",
    )
    for token in (card["token"], bank["token"]):
        await proxy.request("GET", f"/v1/tokens/{token}", client="orders")
    await proxy.request("GET", "/v1/customers/cus-ids/tokens", client="orders")
    await proxy.request("GET", "/v1/customers/cus-ids/export", client="ops")
    await proxy.request("DELETE", f"/v1/tokens/{card['token']}", client="eraser")
    status, _, _ = await proxy.request("DELETE", "/v1/customers/cus-ids", client="eraser")
    assert status == 200
    answers = b"".join(proxy.responses)
    for marker in (b"pm_", b"cus_", b"in_1Ids", b"mandate_reference", b"partner_reference"):
        assert marker not in answers, marker
    assert audit_events(proxy, "token.resolve") == []


def backup(live: Path, target: Path) -> None:
    """A consistent copy of the live vault, as a backup job takes it."""
    src, dst = sqlite3.connect(live), sqlite3.connect(target)
    src.backup(dst)
    dst.close()
    src.close()


async def test_erasure_detaches_deletes_and_shreds(
    proxy: RunningProxy, localstripe: Localstripe, tmp_path: Path
) -> None:
    """DELETE /v1/customers/{ref}: PMs detached, partner customer deleted, rows gone, and
    ciphertext from a pre-erasure copy no longer decrypts in the vault."""
    cards = [await add_card(proxy, "cus-erase", card) for card in PARTNER_CARDS[:2]]
    bank = await create(proxy, "/v1/bank-accounts", bank_body(customer_ref="cus-erase"))
    inv = await create(proxy, "/v1/invoices", invoice_body(customer_ref="cus-erase"), "invoicer")
    survivor = await add_card(proxy, "cus-stays")
    pms = [await pm_of(proxy, t["token"]) for t in [*cards, bank]]
    _, first_pm = await partner_get(localstripe, f"/v1/payment_methods/{pms[0]}")
    partner_customer = first_pm["customer"]
    copy = tmp_path / "backup.db"
    backup(proxy.vault_path, copy)

    status, _, _ = await proxy.request("DELETE", "/v1/customers/cus-erase", client="orders")
    assert status == 403
    status, report, _ = await proxy.request("DELETE", "/v1/customers/cus-erase", client="eraser")
    assert status == 200, report
    assert report is not None
    assert report["status"] == "erased"
    assert report["deleted"] == {"card": 2, "bank": 1, "invoice": 1}
    assert report["partner"] == {
        "payment_methods_detached": 3,
        "customer_deleted": True,
        "subscriptions_cancelled": True,
    }
    assert report["key_shredded"] is True
    assert report["remaining"] == []

    for pm in pms:
        _, obj = await partner_get(localstripe, f"/v1/payment_methods/{pm}")
        assert obj["customer"] is None
    status, _ = await partner_get(localstripe, f"/v1/customers/{partner_customer}")
    assert status == 404
    for token in [*cards, bank, inv]:
        status, _, _ = await proxy.request("GET", f"/v1/tokens/{token['token']}", client="billing")
        assert status == 404
    assert (await resolve(proxy, survivor["token"]))["customer_ref"] == "cus-stays"
    status, page, _ = await proxy.request("GET", "/v1/customers/cus-erase/tokens", client="orders")
    assert page is not None
    assert page["data"] == []

    # Restore the old rows from the copy into the live file: their key is gone.
    old = sqlite3.connect(copy)
    saved = old.execute(
        "SELECT token, kind, dek_id, ciphertext, created_at FROM records WHERE token = ?",
        (cards[0]["token"],),
    ).fetchone()
    old.close()
    live = sqlite3.connect(proxy.vault_path)
    live.execute(
        "INSERT INTO records (token, kind, dek_id, ciphertext, created_at) VALUES (?, ?, ?, ?, ?)",
        saved,
    )
    live.commit()
    live.close()
    status, body, _ = await proxy.request("GET", f"/v1/tokens/{saved[0]}", client="billing")
    assert status == 503
    assert body is not None
    assert body["error"]["code"] == "record_unreadable"  # type: ignore[index]
    assert pms[0] not in str(body)

    # Idempotent: a repeat says it was already erased and deletes nothing more.
    status, again, _ = await proxy.request("DELETE", "/v1/customers/cus-erase", client="eraser")
    assert status == 200
    assert again is not None
    assert again["status"] == "already_erased"
    assert again["partner"] == {
        "payment_methods_detached": 0,
        "customer_deleted": False,
        "subscriptions_cancelled": False,
    }
    text = await metrics_text(proxy)
    assert 'tokenproxy_customer_erasures_total{outcome="complete"} 1.0' in text
    assert 'tokenproxy_customer_erasures_total{outcome="already_erased"} 1.0' in text
    assert 'tokenproxy_tokens_deleted_total{kind="card",reason="erasure"} 2.0' in text


async def test_erasure_with_partner_down_reports_what_remains(
    proxy: RunningProxy, localstripe: Localstripe, dead_partner: Partner
) -> None:
    """Partner failures are retried, then 502 erasure_incomplete lists what the vault kept;
    repeating the request once the partner is back finishes the erasure."""
    cards = [await add_card(proxy, "cus-partial", card) for card in PARTNER_CARDS[:2]]
    inv = await create(proxy, "/v1/invoices", invoice_body(customer_ref="cus-partial"), "invoicer")
    services = proxy.app[SERVICES]
    live_partner = services.partner
    services.partner = dead_partner
    try:
        status, body, _ = await proxy.request(
            "DELETE", "/v1/customers/cus-partial", client="eraser"
        )
    finally:
        services.partner = live_partner
    assert status == 502
    assert body is not None
    error = body["error"]
    assert error["code"] == "erasure_incomplete"  # type: ignore[index]
    assert error["deleted"] == {"invoice": 1}  # type: ignore[index]
    assert error["key_shredded"] is False  # type: ignore[index]
    remaining = error["remaining"]  # type: ignore[index]
    assert {(r["object"], r.get("token")) for r in remaining} == {
        ("token", cards[0]["token"]),
        ("token", cards[1]["token"]),
        ("partner_customer", None),
    }
    assert all(r["reason"] == "partner_unavailable" for r in remaining)
    assert (
        'tokenproxy_partner_attempts_total{operation="detach",outcome="partner_unavailable",'
        'partner="stripe"} 6.0' in await metrics_text(proxy)
    )
    # The kept cards are intact, the invoice is gone.
    for card in cards:
        await resolve(proxy, card["token"])
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{inv['token']}", client="orders")
    assert status == 404

    status, report, _ = await proxy.request("DELETE", "/v1/customers/cus-partial", client="eraser")
    assert status == 200, report
    assert report is not None
    assert report["deleted"] == {"card": 2}
    assert report["key_shredded"] is True
    for table in ("records", "customers", "deks"):
        assert rows(proxy.vault_path, f"SELECT COUNT(*) FROM {table}") == [(0,)]  # noqa: S608


async def test_delete_token_detaches_at_partner(
    proxy: RunningProxy, localstripe: Localstripe, dead_partner: Partner
) -> None:
    """DELETE /v1/tokens/{t} detaches the PM, then deletes; a partner outage deletes nothing."""
    card = await add_card(proxy, "cus-del")
    inv = await create(proxy, "/v1/invoices", invoice_body(customer_ref="cus-del"), "invoicer")
    pm = await pm_of(proxy, card["token"])
    status, _, _ = await proxy.request("DELETE", f"/v1/tokens/{card['token']}", client="billing")
    assert status == 403

    services = proxy.app[SERVICES]
    live_partner = services.partner
    services.partner = dead_partner
    try:
        status, body, _ = await proxy.request(
            "DELETE", f"/v1/tokens/{card['token']}", client="eraser"
        )
    finally:
        services.partner = live_partner
    assert status == 503
    assert body is not None
    assert body["error"]["code"] == "partner_unavailable"  # type: ignore[index]
    await resolve(proxy, card["token"])

    status, result, _ = await proxy.request(
        "DELETE", f"/v1/tokens/{card['token']}", client="eraser"
    )
    assert status == 200
    assert result == {
        "object": "token_deletion",
        "token": card["token"],
        "kind": "card",
        "deleted": True,
        "partner_detached": True,
    }
    _, obj = await partner_get(localstripe, f"/v1/payment_methods/{pm}")
    assert obj["customer"] is None
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{card['token']}", client="billing")
    assert status == 404
    status, _, _ = await proxy.request("DELETE", f"/v1/tokens/{card['token']}", client="eraser")
    assert status == 404

    status, result, _ = await proxy.request("DELETE", f"/v1/tokens/{inv['token']}", client="eraser")
    assert status == 200
    assert result is not None
    assert result["partner_detached"] is False
    status, _, _ = await proxy.request("DELETE", "/v1/tokens/not-a-token", client="eraser")
    assert status == 404


def test_declined_card_is_a_valid_visa() -> None:
    """The attach-declined test card passes our own validation (the refusal is the partner's)."""
    assert luhn_complete(DECLINED_ON_ATTACH[:-1]) == DECLINED_ON_ATTACH


def audit_events(proxy: RunningProxy, event_type: str) -> list[tuple[Any, ...]]:
    """Audit rows of one type, read from the file."""
    return rows(
        proxy.vault_path,
        "SELECT outcome, actor, resource, detail FROM audit_events WHERE event_type = ?"
        " ORDER BY seq",
        event_type,
    )


async def test_deletion_and_erasure_write_audit_events(
    proxy: RunningProxy, dead_partner: Partner
) -> None:
    """Token deletion and customer erasure each leave an event (failures too), naming the
    token or the customer's keyed digest, never the customer_ref or a partner reference."""
    card = await add_card(proxy, "cus-audited")
    other = await add_card(proxy, "cus-audited", PARTNER_CARDS[1])
    status, _, _ = await proxy.request("DELETE", f"/v1/tokens/{card['token']}", client="eraser")
    assert status == 200
    services = proxy.app[SERVICES]
    live_partner = services.partner
    services.partner = dead_partner
    try:
        status, _, _ = await proxy.request("DELETE", "/v1/customers/cus-audited", client="eraser")
    finally:
        services.partner = live_partner
    assert status == 502
    status, _, _ = await proxy.request("DELETE", "/v1/customers/cus-audited", client="eraser")
    assert status == 200

    deletes = audit_events(proxy, "token.delete")
    assert deletes == [
        ("success", "eraser", card["token"], '{"kind":"card","partner_detached":true}')
    ]
    erasures = audit_events(proxy, "customer.erase")
    assert [(e[0], e[1]) for e in erasures] == [("failure", "eraser"), ("success", "eraser")]
    resource = services.vault.audit.digest("customer", "cus-audited")
    assert {e[2] for e in erasures} == {resource}
    assert '"error":"erasure_incomplete"' in erasures[0][3]
    assert '"deleted_card":1' in erasures[1][3]
    trail = str(rows(proxy.vault_path, "SELECT * FROM audit_events"))
    assert "cus-audited" not in trail
    assert "pm_" not in trail
    assert other["token"] not in trail
