"""Idempotency-Key on POST /v1/cards through the real server, partner behind the fault proxy."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3

import pytest

from tests.cards import PARTNER_CARDS, VISA
from tests.conftest import RunningProxy
from tests.faultproxy import Fault, FaultProxy
from tests.helpers import bank_body
from tests.proxy.test_cards_api import card_body
from tests.resilience.conftest import MakeProxy, metric


async def post(
    proxy: RunningProxy,
    body: object,
    key: str | None,
    *,
    client: str = "checkout",
) -> tuple[int, bytes, dict[str, str]]:
    """POST /v1/cards with an optional Idempotency-Key; status, raw body, headers."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    raw = json.dumps(body).encode()
    status, _, resp = await proxy.request(
        "POST", "/v1/cards", client=client, data=raw, headers=headers
    )
    return status, proxy.responses[-1], dict(resp.headers)


def error_code(raw: bytes) -> str:
    """The error code of an error body."""
    return str(json.loads(raw)["error"]["code"])


async def test_same_key_same_body_replays_first_answer(
    fproxy: RunningProxy, faults: FaultProxy
) -> None:
    """A repeat with the same key and body gets the same status and bytes, marked replayed."""
    first = await post(fproxy, card_body(), "order-1")
    again = await post(fproxy, card_body(), "order-1")
    assert first[0] == again[0] == 201
    assert again[1] == first[1]
    assert again[2].get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first[2]
    assert len(faults.payment_method_posts()) == 1
    assert await metric(fproxy, "tokenproxy_idempotency_requests_total", outcome="replayed") == 1


async def test_same_key_other_body_is_422(fproxy: RunningProxy, faults: FaultProxy) -> None:
    """Reusing a key with another body is refused with 422 idempotency_key_reused."""
    assert (await post(fproxy, card_body(), "order-2"))[0] == 201
    status, raw, _ = await post(fproxy, card_body(PARTNER_CARDS[1]), "order-2")
    assert status == 422
    assert error_code(raw) == "idempotency_key_reused"
    assert json.loads(raw)["error"]["type"] == "idempotency_error"
    assert PARTNER_CARDS[1].number.encode() not in raw
    assert len(faults.payment_method_posts()) == 1


async def test_keys_are_scoped_per_client(fproxy: RunningProxy) -> None:
    """Two clients using the same key string get independent results."""
    a = await post(fproxy, card_body(), "shared-key", client="checkout")
    b = await post(fproxy, card_body(PARTNER_CARDS[2]), "shared-key", client="checkout2")
    assert a[0] == b[0] == 201
    assert json.loads(a[1])["token"] != json.loads(b[1])["token"]
    assert "Idempotent-Replayed" not in b[2]


async def test_key_in_flight_is_409_then_replayed(fproxy: RunningProxy, faults: FaultProxy) -> None:
    """While the first request runs, a repeat gets 409; once it ends, the repeat replays it."""
    faults.script(Fault.latency(1.0))
    first = asyncio.create_task(post(fproxy, card_body(), "slow-1"))
    await faults.arrived.wait()
    status, raw, headers = await post(fproxy, card_body(), "slow-1")
    assert status == 409
    assert error_code(raw) == "idempotency_key_in_use"
    assert headers.get("Retry-After") == "1"
    done = await first
    assert done[0] == 201
    replay = await post(fproxy, card_body(), "slow-1")
    assert replay[:2] == done[:2]
    assert len(faults.payment_method_posts()) == 1


@pytest.mark.parametrize(
    "key", ["", "x" * 256, "caf\u00e9", "a\tb"], ids=["empty", "256", "non-ascii", "tab"]
)
async def test_bad_idempotency_key_header_is_400(
    fproxy: RunningProxy, faults: FaultProxy, key: str
) -> None:
    """Keys must be 1-255 printable ASCII characters; others are refused before any work."""
    headers = {"Content-Type": "application/json", **fproxy.auth("checkout")}
    raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
    raw_headers.append((b"Idempotency-Key", key.encode("utf-8")))
    reader, writer = await asyncio.open_connection(
        fproxy.settings.listen.host, fproxy.settings.listen.port
    )
    body = json.dumps(card_body()).encode()
    head = b"POST /v1/cards HTTP/1.1\r\nHost: x\r\n" + b"".join(
        k + b": " + v + b"\r\n" for k, v in raw_headers
    )
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    response = await reader.read()
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.split()[1] == b"400"
    assert b"invalid_idempotency_key" in rest
    assert VISA.number.encode() not in rest
    assert faults.payment_method_posts() == []


async def test_longest_allowed_key_works(fproxy: RunningProxy) -> None:
    """A 255-character key is accepted and replays."""
    key = "k" * 255
    assert (await post(fproxy, card_body(), key))[0] == 201
    assert (await post(fproxy, card_body(), key))[2].get("Idempotent-Replayed") == "true"


async def test_validation_errors_are_not_recorded(fproxy: RunningProxy) -> None:
    """A body that fails validation does not burn the key: the corrected body succeeds."""
    status, raw, _ = await post(fproxy, card_body(cvc="12"), "fix-me")
    assert status == 422
    assert error_code(raw) == "invalid_cvc"
    assert (await post(fproxy, card_body(), "fix-me"))[0] == 201


async def test_decline_is_final_and_replayed(fproxy: RunningProxy, faults: FaultProxy) -> None:
    """A partner decline is stored: the retry replays the 402 without calling the partner."""
    faults.script(Fault.decline(), then=Fault.error(500))
    body = card_body()
    first = await post(fproxy, body, "declined-1")
    again = await post(fproxy, body, "declined-1")
    assert first[0] == again[0] == 402
    assert again[1] == first[1]
    assert again[2].get("Idempotent-Replayed") == "true"
    assert len(faults.payment_method_posts()) == 1
    assert json.loads(first[1])["error"]["code"] == "card_declined"
    assert VISA.number.encode() not in first[1]


async def test_without_key_each_request_creates(fproxy: RunningProxy, faults: FaultProxy) -> None:
    """Without the header nothing changes: two identical requests make two tokens."""
    a = await post(fproxy, card_body(), None)
    b = await post(fproxy, card_body(), None)
    assert a[0] == b[0] == 201
    assert json.loads(a[1])["token"] != json.loads(b[1])["token"]
    keys = [s.idempotency_key for s in faults.payment_method_posts()]
    # Each still carries its own partner key, so the proxy's own retries stay safe.
    assert len(keys) == 2
    assert all(k and k.startswith("tp_") for k in keys)
    assert keys[0] != keys[1]


async def test_dropped_partner_answer_is_retried_with_same_partner_key(
    fproxy: RunningProxy, faults: FaultProxy
) -> None:
    """The partner did the work but the answer was lost: the retry gets the same pm_."""
    faults.script(Fault.drop())
    status, raw, _ = await post(fproxy, card_body(), "dropped-1")
    assert status == 201
    posts = faults.payment_method_posts()
    assert len(posts) == 2
    assert posts[0].idempotency_key == posts[1].idempotency_key
    assert [len(v) for v in faults.created.values()] == [1]
    assert (
        await metric(
            fproxy,
            "tokenproxy_partner_retries_total",
            partner="stripe",
            operation="create_card",
            reason="partner_unavailable",
        )
        == 1
    )
    token = json.loads(raw)["token"]
    status, view, _ = await fproxy.request("GET", f"/v1/tokens/{token}", client="billing")
    assert status == 200
    assert view is not None
    (created,) = next(iter(faults.created.values()))
    assert view["partner_reference"] == created


async def test_timeout_then_client_retry_completes_first_attempt(
    make_proxy: MakeProxy, faults: FaultProxy
) -> None:
    """The partner answers after our timeout: 504, and the client's retry links that pm_."""
    proxy = await make_proxy(TOKENPROXY_PARTNER_TIMEOUT="0.3", TOKENPROXY_PARTNER_MAX_RETRIES="0")
    faults.script(Fault.latency(0.8))
    status, raw, _ = await post(proxy, card_body(), "late-1")
    assert status == 504
    assert error_code(raw) == "partner_timeout"
    # Wait until the partner finished the first attempt (it is the partner's side).
    for _ in range(100):
        if faults.created:
            break
        await asyncio.sleep(0.05)
    status, raw, _ = await post(proxy, card_body(), "late-1")
    assert status == 201
    assert [len(v) for v in faults.created.values()] == [1]
    token = json.loads(raw)["token"]
    _, view, _ = await proxy.request("GET", f"/v1/tokens/{token}", client="billing")
    assert view is not None
    assert view["partner_reference"] in next(iter(faults.created.values()))


async def test_vault_failure_after_partner_success_keeps_the_link(
    fproxy: RunningProxy, faults: FaultProxy
) -> None:
    """Partner succeeded, vault write failed: 503; the retry finishes with the same pm_."""
    db = sqlite3.connect(fproxy.vault_path)
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'down'); END"
    )
    db.commit()
    status, raw, _ = await post(fproxy, card_body(), "vault-down-1")
    assert status == 503
    assert error_code(raw) == "vault_unavailable"
    assert len(faults.created) == 1
    db.execute("DROP TRIGGER refuse")
    db.commit()
    db.close()
    status, raw, _ = await post(fproxy, card_body(), "vault-down-1")
    assert status == 201
    assert await metric(fproxy, "tokenproxy_idempotency_requests_total", outcome="resumed") == 1
    (created,) = next(iter(faults.created.values()))
    assert [len(v) for v in faults.created.values()] == [1]
    token = json.loads(raw)["token"]
    _, view, _ = await fproxy.request("GET", f"/v1/tokens/{token}", client="billing")
    assert view is not None
    assert view["partner_reference"] == created


def refuse_record_inserts(proxy: RunningProxy) -> None:
    """Make the vault refuse every record insert from now on (the partner call still runs)."""
    db = sqlite3.connect(proxy.vault_path)
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'down'); END"
    )
    db.commit()
    db.close()


async def test_vault_failure_without_key_counts_an_orphan(
    fproxy: RunningProxy, faults: FaultProxy
) -> None:
    """Without a key a vault failure after the partner call is counted as an orphan."""
    refuse_record_inserts(fproxy)
    status, _, _ = await post(fproxy, card_body(), None)
    assert status == 503
    assert await metric(fproxy, "tokenproxy_partner_orphans_total", partner="stripe") == 1


async def test_bank_vault_failure_without_key_counts_an_orphan(
    fproxy: RunningProxy, faults: FaultProxy
) -> None:
    """A bank account the partner created but the vault could not store is an orphan too."""
    refuse_record_inserts(fproxy)
    status, _, _ = await fproxy.request(
        "POST", "/v1/bank-accounts", client="checkout", json=bank_body()
    )
    assert status == 503
    assert await metric(fproxy, "tokenproxy_partner_orphans_total", partner="stripe") == 1
    rows = sqlite3.connect(fproxy.vault_path).execute("SELECT kind, reference FROM partner_outbox")
    assert [(kind, ref is not None) for kind, ref in rows] == [("bank", True)]


async def test_fifty_concurrent_requests_make_one_partner_call(
    fproxy: RunningProxy, faults: FaultProxy
) -> None:
    """50 concurrent identical requests with one key: one partner call, one answer or 409s."""
    faults.script(Fault.latency(0.3))
    results = await asyncio.gather(*(post(fproxy, card_body(), "burst-1") for _ in range(50)))
    statuses = [r[0] for r in results]
    assert set(statuses) <= {201, 409}
    assert statuses.count(201) >= 1
    created = {r[1] for r in results if r[0] == 201}
    assert len(created) == 1
    assert all(error_code(r[1]) == "idempotency_key_in_use" for r in results if r[0] == 409)
    assert len(faults.payment_method_posts()) == 1
    final = await post(fproxy, card_body(), "burst-1")
    assert final[1] in created


async def test_records_are_sealed_at_rest(fproxy: RunningProxy, faults: FaultProxy) -> None:
    """The idempotency table holds no key, body hash, token or pm_ reference in clear."""
    body = card_body()
    raw_body = json.dumps(body).encode()
    _, raw, _ = await post(fproxy, body, "sealed-key-1")
    token = json.loads(raw)["token"]
    (reference,) = next(iter(faults.created.values()))
    db = sqlite3.connect(fproxy.vault_path)
    rows = db.execute("SELECT * FROM idempotency_keys").fetchall()
    db.close()
    assert len(rows) == 1
    dump = repr(rows).encode()
    for needle in (b"sealed-key-1", token.encode(), reference.encode(), VISA.number.encode()):
        assert needle not in dump
    assert hashlib.sha256(raw_body).hexdigest().encode() not in dump
