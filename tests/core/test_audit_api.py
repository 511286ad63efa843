"""Audit through the running proxy: resolves recorded (or refused), failed auth recorded."""

from __future__ import annotations

import json
import sqlite3

import pytest

from proxy.infra.keystatus import refresh_key_metrics
from proxy.web import authguard
from proxy.web.appkeys import METRICS, SERVICES
from tests.conftest import RunningProxy
from vault import Kind, NewRecord


async def stored_token(proxy: RunningProxy) -> str:
    """A token stored straight in the proxy's vault (no partner round trip needed)."""
    vault = proxy.app[SERVICES].vault
    record = await vault.put(
        NewRecord(kind=Kind.CARD, partner="stripe", partner_reference="pm_audit_secret")
    )
    return record.token


def audit_rows(proxy: RunningProxy) -> list[tuple[object, ...]]:
    """The audit table, read from the file."""
    db = sqlite3.connect(proxy.vault_path)
    try:
        return db.execute(
            "SELECT event_type, outcome, actor, origin, resource, detail FROM audit_events"
            " ORDER BY seq"
        ).fetchall()
    finally:
        db.close()


async def settle(proxy: RunningProxy) -> None:
    """Write the tallied failed authentications now, as the interval's end would."""
    await authguard.flush(proxy.app)


async def test_resolve_writes_an_event_with_pci_fields(proxy: RunningProxy) -> None:
    """A resolve records client, type, time, outcome, origin and token, never the reference."""
    token = await stored_token(proxy)
    status, body, _ = await proxy.request("GET", f"/v1/tokens/{token}", client="billing")
    assert status == 200
    assert body is not None
    assert body["partner_reference"] == "pm_audit_secret"
    rows = audit_rows(proxy)
    assert rows == [("token.resolve", "success", "billing", "127.0.0.1", token, "{}")]
    raw = proxy.vault_path.read_bytes() + proxy.vault_path.with_name("vault.db-wal").read_bytes()
    assert b"pm_audit_secret" not in raw


async def test_masked_read_is_not_a_resolve(proxy: RunningProxy) -> None:
    """A read-scope client gets the masked view and writes no resolve event."""
    token = await stored_token(proxy)
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{token}", client="orders")
    assert status == 200
    assert audit_rows(proxy) == []


async def test_failed_resolve_is_recorded_as_failure(proxy: RunningProxy) -> None:
    """A resolve of an unknown token is recorded with outcome failure and the error code."""
    missing = "vtok_card_" + "A" * 32
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{missing}", client="billing")
    assert status == 404
    digest = proxy.app[SERVICES].vault.audit.digest("token", missing)
    assert audit_rows(proxy) == [
        (
            "token.resolve",
            "failure",
            "billing",
            "127.0.0.1",
            digest,
            '{"error":"resource_missing"}',
        )
    ]


# Client-chosen path segments: token-shaped around a card number, malformed, odd bytes.
CHOSEN_TOKENS = [
    "vtok_card_4242424242424242AAAAAAAAAAAAAAAA",
    "vtok_bank_AAAAAAAAAAAAAAAA4000056655665556",
    "vtok_inv_4242-4242-4242-4242_AAAAAAAAAAAAAAA",
    "4242424242424242",
    "vtok_card_short4242424242424242",
    "vtok_card_%E2%80%8B4242424242424242AAAAAAAAAAAAAAA",
    "clientchosen%00text",
]


@pytest.mark.parametrize("client", ["billing", "eraser", "orders"])
@pytest.mark.parametrize("chosen", CHOSEN_TOKENS)
async def test_client_chosen_token_never_enters_the_trail(
    proxy: RunningProxy, chosen: str, client: str
) -> None:
    """A token path the vault does not hold is recorded only as a keyed digest."""
    method = "DELETE" if client == "eraser" else "GET"
    status, _, _ = await proxy.request(method, f"/v1/tokens/{chosen}", client=client)
    assert status == 404
    await settle(proxy)
    trail = "".join(str(field) for row in audit_rows(proxy) for field in row)
    assert "4242" not in trail
    assert "5556" not in trail
    assert "clientchosen" not in trail
    assert "vtok_" not in trail
    if client != "orders":  # a masked read is not audited at all
        (row,) = audit_rows(proxy)
        assert str(row[4]).startswith("token:")
        assert not any(c.isdigit() for c in str(row[4]))


async def test_failed_authentications_are_recorded(proxy: RunningProxy) -> None:
    """Missing key, bad key and missing scope are recorded as auth.failure events: one per
    source and client per interval, with a count per reason."""
    token = await stored_token(proxy)
    assert (await proxy.request("GET", f"/v1/tokens/{token}"))[0] == 401
    bad = {"Authorization": "Bearer tpk_wrong"}
    assert (await proxy.request("GET", f"/v1/tokens/{token}", headers=bad))[0] == 401
    assert (await proxy.request("GET", f"/v1/tokens/{token}", client="checkout"))[0] == 403
    await settle(proxy)
    rows = sorted(audit_rows(proxy), key=lambda r: str(r[2] or ""))
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("auth.failure", "failure", None, "127.0.0.1"),
        ("auth.failure", "failure", "checkout", "127.0.0.1"),
    ]
    anonymous, scope = (json.loads(str(r[5])) for r in rows)
    assert scope["route"] == anonymous["route"] == "/v1/tokens/{token}"
    assert (scope["count"], scope["missing_scope"]) == (1, 1)
    assert (anonymous["count"], anonymous["missing_key"], anonymous["invalid_key"]) == (2, 1, 1)


async def test_resolve_refused_when_audit_cannot_be_written(proxy: RunningProxy) -> None:
    """If the audit event cannot be written, the resolve answers 503 and no reference."""
    token = await stored_token(proxy)
    db = sqlite3.connect(proxy.vault_path)
    db.execute(
        "CREATE TRIGGER audit_broken BEFORE INSERT ON audit_events"
        " BEGIN SELECT RAISE(ABORT, 'audit store full'); END"
    )
    db.commit()
    db.close()
    status, body, raw = await proxy.request("GET", f"/v1/tokens/{token}", client="billing")
    assert status == 503
    assert body is not None
    assert body["error"]["code"] == "audit_unavailable"
    assert b"pm_audit_secret" not in proxy.responses[-1]
    assert raw.headers["X-Request-Id"].startswith("req_")
    status, body, _ = await proxy.request("GET", f"/v1/tokens/{token}", client="orders")
    assert status == 200  # masked reads are not resolves and stay available
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        text = await resp.text()
    assert 'tokenproxy_audit_write_failures_total{event_type="token.resolve"} 1.0' in text


async def test_key_gauges_on_metrics(proxy: RunningProxy) -> None:
    """/metrics exports data keys per version and the rewrap backlog (as last refreshed)."""
    await stored_token(proxy)
    await stored_token(proxy)
    # What the background refresh does every TOKENPROXY_KEY_STATUS_INTERVAL seconds.
    await refresh_key_metrics(proxy.app[METRICS], proxy.app[SERVICES].vault)
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        text = await resp.text()
    assert 'tokenproxy_deks{key_version="1"} 2.0' in text
    assert "tokenproxy_rewrap_remaining 0.0" in text


@pytest.mark.parametrize("ref", ["4242424242424242", "cus 4242-4242-4242-4242", "a" * 300])
async def test_refused_erasure_is_recorded_by_digest(proxy: RunningProxy, ref: str) -> None:
    """An erasure refused for its customer_ref is recorded as a failure, by digest only."""
    status, _, _ = await proxy.request("DELETE", f"/v1/customers/{ref}", client="eraser")
    assert status == 422
    rows = audit_rows(proxy)
    ((event_type, outcome, actor, _, resource, detail),) = rows
    assert (event_type, outcome, actor) == ("customer.erase", "failure", "eraser")
    assert resource == proxy.app[SERVICES].vault.audit.digest("customer", ref)
    assert "4242" not in str(rows)
    assert "error" in str(detail)
