"""Idempotency keys meet erasure and final errors, through the real server on both backends:
erasure removes a customer's keys, every final answer is replayed byte for byte with the
same headers, keys never hold a raw fingerprint, and erasure reports only what it saw."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tokenproxy_sandbox.launcher import Localstripe

from proxy.web.appkeys import SERVICES
from tests.backends import RawRows
from tests.cards import VISA
from tests.conftest import RunningProxy
from tests.core.test_invoices import invoice_body
from tests.helpers import bank_body, create, metrics_text, partner_get, resolve
from tests.proxy.test_cards_api import card_body
from tests.proxy.test_customers import DECLINED_ON_ATTACH
from vault import Kind
from vault.idempotency import _aad

JSON = "application/json; charset=utf-8"


@pytest.fixture
def proxy_env(vault_url: str) -> dict[str, str]:
    """Serve on the parametrised backend: every test here runs on SQLite and PostgreSQL."""
    return {"TOKENPROXY_VAULT_URL": vault_url}


async def post(
    proxy: RunningProxy, path: str, body: dict[str, object], key: str | None, client: str
) -> tuple[int, bytes, dict[str, str]]:
    """POST (with an Idempotency-Key unless None); status, raw body, headers."""
    headers = proxy.auth(client)
    if key is not None:
        headers["Idempotency-Key"] = key
    async with proxy.http.post(proxy.base + path, json=body, headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def erase(proxy: RunningProxy, customer: str) -> tuple[int, dict[str, Any]]:
    """DELETE /v1/customers/{customer}; status and JSON body."""
    status, body, _ = await proxy.request("DELETE", f"/v1/customers/{customer}", client="eraser")
    assert body is not None
    return status, body


async def partner_count(proxy: RunningProxy, operation: str, outcome: str) -> str:
    """The partner request counter line for one operation and outcome, as exposed."""
    prefix = f'tokenproxy_partner_requests_total{{operation="{operation}",outcome="{outcome}"'
    lines = [ln for ln in (await metrics_text(proxy)).splitlines() if ln.startswith(prefix)]
    return lines[0].rsplit(" ", 1)[1] if lines else "0"


async def test_attach_decline_is_stored_and_replayed(proxy: RunningProxy) -> None:
    """A decline when saving on the customer's partner customer is the key's final answer:
    the retry gets the same bytes and headers, marked replayed, with no partner round trip."""
    body = card_body(number=DECLINED_ON_ATTACH, cvc="123", customer_ref="cus-attach")
    first = await post(proxy, "/v1/cards", body, "attach-declined", "checkout")
    again = await post(proxy, "/v1/cards", body, "attach-declined", "checkout")
    assert first[0] == again[0] == 402
    assert json.loads(first[1])["error"]["code"] == "card_declined"
    assert again[1] == first[1]
    assert again[2].get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first[2]
    assert first[2]["Content-Type"] == again[2]["Content-Type"] == JSON
    assert await partner_count(proxy, "setup", "card_declined") == "1.0"
    assert await partner_count(proxy, "create_card", "ok") == "1.0"
    assert DECLINED_ON_ATTACH.encode() not in first[1]


@pytest.mark.parametrize(
    ("path", "client", "body"),
    [
        ("/v1/cards", "checkout", card_body()),
        ("/v1/bank-accounts", "checkout", bank_body()),
        ("/v1/invoices", "invoicer", invoice_body()),
    ],
)
async def test_replayed_answers_carry_the_fresh_content_type(
    proxy: RunningProxy, path: str, client: str, body: dict[str, object]
) -> None:
    """Fresh, replayed and key-less answers of a creating POST share one Content-Type."""
    fresh = await post(proxy, path, body, "ct-1", client)
    replayed = await post(proxy, path, body, "ct-1", client)
    keyless = await post(proxy, path, body, None, client)
    assert fresh[0] == replayed[0] == keyless[0] == 201
    assert replayed[2].get("Idempotent-Replayed") == "true"
    assert fresh[2]["Content-Type"] == replayed[2]["Content-Type"] == JSON
    assert keyless[2]["Content-Type"] == JSON


async def test_erasure_removes_the_customers_keys_and_replay_is_410(
    proxy: RunningProxy, raw_rows: RawRows
) -> None:
    """After erasure no key of the customer replays its token or masked number: each answers
    410 idempotency_key_erased, and nothing of the customer's key rows stays in the vault."""
    made = [
        ("/v1/cards", "checkout", card_body(customer_ref="cus-gone")),
        ("/v1/bank-accounts", "checkout", bank_body(customer_ref="cus-gone")),
        ("/v1/invoices", "invoicer", invoice_body(customer_ref="cus-gone")),
    ]
    answers = [
        await post(proxy, path, body, f"gone-{i}", c) for i, (path, c, body) in enumerate(made)
    ]
    assert [a[0] for a in answers] == [201, 201, 201]
    kept = await post(proxy, "/v1/cards", card_body(customer_ref="cus-kept"), "kept", "checkout")
    held = await raw_rows.query(
        "SELECT key_idx, wrapped_dek, partner_result, response, request_mac, customer_idx"
        " FROM idempotency_keys"
    )
    assert len(held) == 4

    status, report = await erase(proxy, "cus-gone")
    assert status == 200, report
    assert report["status"] == "erased"
    assert report["idempotency_keys_deleted"] == 3

    for i, (path, client, body) in enumerate(made):
        status, raw, headers = await post(proxy, path, body, f"gone-{i}", client)
        assert status == 410
        assert json.loads(raw)["error"]["code"] == "idempotency_key_erased"
        assert "Idempotent-Replayed" not in headers
        created = json.loads(answers[i][1])
        shown = [created["token"], created.get("masked") or created["token"]]
        assert all(value.encode() not in raw for value in shown)
    again = await post(proxy, "/v1/cards", card_body(customer_ref="cus-kept"), "kept", "checkout")
    assert again[1] == kept[1]
    assert again[2].get("Idempotent-Replayed") == "true"

    # Leak scan: no byte of the erased rows (data key, sealed answers, body MAC, customer
    # index) is left in the database; what stays of a key is its blind index and expiry.
    (kept_idx,) = [row[0] for row in await raw_rows.query("SELECT key_idx FROM idempotency_keys")]
    stored = await raw_rows.stored_bytes()
    for key_idx, wrapped, partner, response, mac, customer_idx in held:
        if key_idx == kept_idx:
            continue
        for value in (wrapped, partner, response, mac.encode()):
            assert value not in stored
        assert customer_idx is not None
    gone_idx = proxy.app[SERVICES].vault.index("customer", "cus-gone")
    assert await raw_rows.query(
        "SELECT count(*) FROM idempotency_keys WHERE customer_idx = ?", (gone_idx,)
    ) == [(0,)]
    assert await raw_rows.query("SELECT count(*) FROM idempotency_erased") == [(3,)]


async def test_erasure_reaches_keys_made_before_the_customer_existed(
    proxy: RunningProxy, raw_rows: RawRows
) -> None:
    """A declined first card leaves only its key's row: erasing the customer finds and removes
    it (status erased), the retry is 410, and erasing once more says already_erased."""
    body = card_body(number=DECLINED_ON_ATTACH, cvc="123", customer_ref="cus-first")
    assert (await post(proxy, "/v1/cards", body, "first-card", "checkout"))[0] == 402
    assert await raw_rows.query("SELECT count(*) FROM deks") == [(0,)]

    status, report = await erase(proxy, "cus-first")
    assert status == 200, report
    assert report["status"] == "erased"
    assert report["deleted"] == {}
    assert report["idempotency_keys_deleted"] == 1
    status, _, _ = await post(proxy, "/v1/cards", body, "first-card", "checkout")
    assert status == 410
    assert await raw_rows.query("SELECT count(*) FROM idempotency_keys") == [(0,)]

    status, report = await erase(proxy, "cus-first")
    assert status == 200
    assert report["status"] == "already_erased"
    assert report["idempotency_keys_deleted"] == 0


async def test_erasing_an_unknown_customer_says_so(proxy: RunningProxy) -> None:
    """A customer_ref the vault never held is 404 customer_not_found, never "erased";
    a repeated real erasure is 200 already_erased; the metric tells them apart."""
    status, body = await erase(proxy, "cus-never-seen")
    assert status == 404
    assert body["error"]["code"] == "customer_not_found"
    assert "cus-never-seen" not in json.dumps(body)

    await create(proxy, "/v1/cards", card_body(customer_ref="cus-real"))
    first = await erase(proxy, "cus-real")
    second = await erase(proxy, "cus-real")
    assert first[0] == second[0] == 200
    assert first[1]["status"] == "erased"
    assert second[1]["status"] == "already_erased"
    assert second[1]["deleted"] == {}
    assert second[1]["key_shredded"] is True
    text = await metrics_text(proxy)
    assert 'tokenproxy_customer_erasures_total{outcome="not_found"} 1.0' in text
    assert 'tokenproxy_customer_erasures_total{outcome="already_erased"} 1.0' in text


@pytest.mark.parametrize("damage", ["ciphertext", "key_version"])
async def test_erasure_with_an_unreadable_record_deletes_nothing(
    proxy: RunningProxy, raw_rows: RawRows, damage: str
) -> None:
    """A customer record the vault cannot open (its ciphertext fails authentication, or its
    data key names a version the key ring lacks) fails the erasure with 503
    record_unreadable before anything is detached or deleted: it is never reported erased."""
    a = await create(proxy, "/v1/cards", card_body(customer_ref="cus-broken"))
    b = await create(proxy, "/v1/invoices", invoice_body(customer_ref="cus-broken"), "invoicer")
    if damage == "ciphertext":
        ((ciphertext,),) = await raw_rows.query(
            "SELECT ciphertext FROM records WHERE token = ?", (b["token"],)
        )
        flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
        await raw_rows.query(
            "UPDATE records SET ciphertext = ? WHERE token = ?", (flipped, b["token"])
        )
    else:
        await raw_rows.query("UPDATE deks SET kek_version = 99")
    services = proxy.app[SERVICES]
    services.vault._deks.clear()  # as a freshly started process holds no unwrapped key

    status, body = await erase(proxy, "cus-broken")
    assert status == 503
    assert body["error"]["code"] == "record_unreadable"
    assert await raw_rows.query("SELECT count(*) FROM records") == [(2,)]
    assert await raw_rows.query("SELECT count(*) FROM deks") == [(1,)]
    if damage == "ciphertext":
        assert (await resolve(proxy, a["token"]))["customer_ref"] == "cus-broken"


async def test_keys_hold_a_fingerprint_index_never_the_fingerprint(
    proxy: RunningProxy, raw_rows: RawRows, localstripe: Localstripe
) -> None:
    """The partner answer sealed in a key's row carries the fingerprint's keyed blind index
    (the same one the record keeps), never the partner's fingerprint itself."""
    answer = await post(proxy, "/v1/cards", card_body(VISA), "fp-1", "checkout")
    assert answer[0] == 201
    token = json.loads(answer[1])["token"]
    pm = (await resolve(proxy, token))["partner_reference"]
    _, obj = await partner_get(localstripe, f"/v1/payment_methods/{pm}")
    fingerprint = obj["card"]["fingerprint"]
    assert fingerprint

    services = proxy.app[SERVICES]
    store = services.idempotency
    assert store is not None
    row = await store.backend.idempotency_get(store.key_index("checkout", "fp-1"))
    plain = (await store._unwrap(row)).open(
        row.partner_result, _aad(row.key_idx, "partner", row.request_mac)
    )
    stored = json.loads(plain)
    assert "fingerprint" not in stored
    assert fingerprint.encode() not in plain
    ((record_idx,),) = await raw_rows.query(
        "SELECT fingerprint_idx FROM records WHERE token = ?", (token,)
    )
    assert stored["fingerprint_idx"] == record_idx
    assert record_idx == services.vault.fingerprint_index(Kind.CARD, fingerprint)
