"""The card path end to end: real server on loopback, localstripe partner, SQLite vault."""

from __future__ import annotations

import sqlite3

import aiohttp
import pytest
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe

from tests.cards import PARTNER_CARDS, VISA
from tests.conftest import RunningProxy
from tests.helpers import counted


def card_body(card: object = VISA, **overrides: object) -> dict[str, object]:
    """A valid POST /v1/cards body for ``card``."""
    body: dict[str, object] = {
        "number": card.number,  # type: ignore[attr-defined]
        "exp_month": 12,
        "exp_year": 2034,
        "cvc": card.cvc,  # type: ignore[attr-defined]
    }
    body.update(overrides)
    return body


async def tokenize(proxy: RunningProxy, body: dict[str, object]) -> dict[str, object]:
    """Tokenize and insist on a 201."""
    status, payload, _ = await proxy.request("POST", "/v1/cards", client="checkout", json=body)
    assert status == 201, payload
    assert payload is not None
    return payload


@pytest.mark.parametrize("card", PARTNER_CARDS, ids=lambda c: c.brand)
async def test_tokenize_returns_token_and_masked_card(proxy: RunningProxy, card: object) -> None:
    """A valid card gets 201 with a vtok_card_ token, our IIN brand, last4 and a masked PAN."""
    payload = await tokenize(proxy, card_body(card))
    number = card.number  # type: ignore[attr-defined]
    assert payload["token"].startswith("vtok_card_")  # type: ignore[union-attr]
    assert payload["kind"] == "card"
    assert payload["brand"] == card.brand  # type: ignore[attr-defined]
    assert payload["last4"] == number[-4:]
    assert payload["masked"] == number[:6] + "*" * 6 + number[-4:]
    partner_facts = {"display_brand", "funding", "country"}
    assert set(payload) - partner_facts == {
        "token",
        "kind",
        "brand",
        "last4",
        "masked",
        "reusable",
        "created_at",
    }


async def test_read_scope_sees_masked_view_only(proxy: RunningProxy) -> None:
    """A `read` client gets brand/last4/masked/metadata but never the partner reference."""
    created = await tokenize(proxy, card_body(customer_ref="cus-1001", metadata={"order": "A-17"}))
    status, view, _ = await proxy.request("GET", f"/v1/tokens/{created['token']}", client="orders")
    assert status == 200
    assert view is not None
    assert view["token"] == created["token"]
    assert view["masked"] == created["masked"]
    assert view["customer_ref"] == "cus-1001"
    assert view["metadata"] == {"order": "A-17"}
    assert "partner_reference" not in view
    assert "partner" not in view


async def test_resolve_scope_gets_partner_reference_that_exists_at_partner(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """A `resolve` client gets the pm_ reference, and localstripe holds that PaymentMethod."""
    created = await tokenize(proxy, card_body(holder_name="Ada Lovelace"))
    status, view, _ = await proxy.request("GET", f"/v1/tokens/{created['token']}", client="billing")
    assert status == 200
    assert view is not None
    assert view["partner"] == "stripe"
    reference = view["partner_reference"]
    assert isinstance(reference, str)
    assert reference.startswith("pm_")
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{localstripe.base_url}/v1/payment_methods/{reference}",
            headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
        ) as resp,
    ):
        pm = await resp.json()
    assert pm["card"]["last4"] == VISA.number[-4:]
    assert pm["billing_details"]["name"] == "Ada Lovelace"


async def test_each_tokenization_gets_a_new_random_token(proxy: RunningProxy) -> None:
    """The same card twice yields two different tokens (tokens are not derived from the PAN)."""
    first = await tokenize(proxy, card_body())
    second = await tokenize(proxy, card_body())
    assert first["token"] != second["token"]


@pytest.mark.parametrize(
    "token",
    [
        "vtok_card_" + "A" * 32,
        "vtok_card_short",
        "not-a-token",
        "4242424242424242",
        "vtok_x_" + "A" * 32,
    ],
)
async def test_unknown_and_malformed_tokens_are_the_same_404(
    proxy: RunningProxy, token: str
) -> None:
    """Unknown and malformed tokens both answer 404 resource_missing: no shape oracle."""
    status, body, resp = await proxy.request("GET", f"/v1/tokens/{token}", client="orders")
    assert status == 404
    assert body is not None
    assert body["error"]["code"] == "resource_missing"  # type: ignore[index]
    assert body["error"]["request_id"] == resp.headers["X-Request-Id"]  # type: ignore[index]
    assert token not in str(body)


async def test_missing_and_bad_keys_are_401(proxy: RunningProxy) -> None:
    """No Authorization header, a non-bearer scheme and an unknown key all get 401."""
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer tpk_nope"}):
        status, body, resp = await proxy.request(
            "POST", "/v1/cards", json=card_body(), headers=headers
        )
        assert status == 401
        assert body is not None
        assert body["error"]["type"] == "authentication_error"  # type: ignore[index]
        assert "WWW-Authenticate" in resp.headers


@pytest.mark.parametrize(
    ("client", "method", "path"),
    [
        ("orders", "POST", "/v1/cards"),
        ("billing", "POST", "/v1/cards"),
        ("checkout", "GET", "/v1/tokens/vtok_card_" + "A" * 32),
        ("ops", "GET", "/v1/tokens/vtok_card_" + "A" * 32),
        ("eraser", "POST", "/v1/cards"),
    ],
)
async def test_missing_scope_is_403(
    proxy: RunningProxy, client: str, method: str, path: str
) -> None:
    """A valid key without the route's scope gets 403 permission_error."""
    status, body, _ = await proxy.request(method, path, client=client, json=card_body())
    assert status == 403
    assert body is not None
    assert body["error"]["type"] == "permission_error"  # type: ignore[index]


async def test_invalid_card_is_422_and_never_reaches_partner(proxy: RunningProxy) -> None:
    """A Luhn failure is rejected before the partner is called (no partner metric moves)."""
    bad = VISA.number[:-1] + str((int(VISA.number[-1]) + 1) % 10)
    status, body, _ = await proxy.request(
        "POST", "/v1/cards", client="checkout", json=card_body(number=bad)
    )
    assert status == 422
    assert body is not None
    assert body["error"]["code"] == "invalid_number"  # type: ignore[index]
    assert body["error"]["param"] == "number"  # type: ignore[index]
    assert bad not in str(body)
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        text = await resp.text()
    assert not counted(text, "tokenproxy_partner_requests_total")


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        (
            {
                "data": b"number=4242",
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
            415,
            "unsupported_media_type",
        ),
        ({"json": ["a list"]}, 400, "invalid_body"),
        ({"json": {**card_body(), "track2": "x"}}, 400, "unknown_field"),
        (
            {
                "data": b"[" * 100_000 + b"]" * 100_000,
                "headers": {"Content-Type": "application/json"},
            },
            413,
            "payload_too_large",
        ),
        (
            {"data": b"[" * 5000 + b"]" * 5000, "headers": {"Content-Type": "application/json"}},
            400,
            "json_too_deep",
        ),
    ],
    ids=["bad-json", "form", "not-object", "unknown-field", "too-large", "deep-nesting"],
)
async def test_malformed_requests_get_the_error_shape(
    proxy: RunningProxy, kwargs: dict[str, object], status: int, code: str
) -> None:
    """Bad JSON, other media types, wrong shapes and huge bodies each get a typed error body."""
    got, body, resp = await proxy.request("POST", "/v1/cards", client="checkout", **kwargs)
    assert got == status
    assert body is not None
    assert body["error"]["code"] == code  # type: ignore[index]
    assert set(body["error"]) == {"type", "code", "message", "param", "request_id"}  # type: ignore[arg-type]
    assert resp.headers["X-Request-Id"].startswith("req_")


async def test_unknown_route_and_method_get_the_error_shape(proxy: RunningProxy) -> None:
    """404 for an unknown path and 405 (with Allow) for a wrong method, both in our shape."""
    status, body, _ = await proxy.request("GET", "/v1/nothing", client="orders")
    assert status == 404
    assert body is not None
    assert body["error"]["code"] == "route_not_found"  # type: ignore[index]
    status, body, resp = await proxy.request("DELETE", "/v1/cards", client="checkout")
    assert status == 405
    assert body is not None
    assert body["error"]["code"] == "method_not_allowed"  # type: ignore[index]
    assert "POST" in resp.headers["Allow"]


async def test_tampered_ciphertext_fails_closed(proxy: RunningProxy) -> None:
    """A flipped byte in a stored ciphertext gives an error and a metric, never data."""
    created = await tokenize(proxy, card_body(customer_ref="cus-tamper"))
    db = sqlite3.connect(proxy.vault_path)
    (blob,) = db.execute(
        "SELECT ciphertext FROM records WHERE token = ?", (created["token"],)
    ).fetchone()
    flipped = bytearray(blob)
    flipped[20] ^= 0x01
    db.execute(
        "UPDATE records SET ciphertext = ? WHERE token = ?", (bytes(flipped), created["token"])
    )
    db.commit()
    db.close()
    status, body, _ = await proxy.request("GET", f"/v1/tokens/{created['token']}", client="billing")
    assert status == 503
    assert body is not None
    assert body["error"]["code"] == "record_unreadable"  # type: ignore[index]
    assert "pm_" not in str(body)
    assert "cus-tamper" not in str(body)
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        assert "tokenproxy_decryption_failures_total 1.0" in await resp.text()


async def test_ciphertext_moved_to_another_row_fails(proxy: RunningProxy) -> None:
    """Copying one token's ciphertext (and key id) onto another token's row does not decrypt."""
    a = await tokenize(proxy, card_body(customer_ref="cus-a"))
    b = await tokenize(proxy, card_body(customer_ref="cus-b"))
    db = sqlite3.connect(proxy.vault_path)
    row = db.execute(
        "SELECT ciphertext, dek_id FROM records WHERE token = ?", (a["token"],)
    ).fetchone()
    db.execute("UPDATE records SET ciphertext = ?, dek_id = ? WHERE token = ?", (*row, b["token"]))
    db.commit()
    db.close()
    status, body, _ = await proxy.request("GET", f"/v1/tokens/{b['token']}", client="billing")
    assert status == 503
    assert body is not None
    assert body["error"]["code"] == "record_unreadable"  # type: ignore[index]
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{a['token']}", client="billing")
    assert status == 200


async def test_every_response_has_a_request_id(proxy: RunningProxy) -> None:
    """Success, error and docs responses all carry a fresh X-Request-Id."""
    seen = set()
    for method, path, client in [
        ("GET", "/openapi.json", None),
        ("GET", "/v1/tokens/x", "orders"),
        ("POST", "/v1/cards", None),
    ]:
        _, _, resp = await proxy.request(method, path, client=client, json={})
        seen.add(resp.headers["X-Request-Id"])
    assert len(seen) == 3


async def test_ops_listener_serves_health_readiness_and_metrics(proxy: RunningProxy) -> None:
    """/healthz and /readyz answer 200 and /metrics carries the request and partner series."""
    await tokenize(proxy, card_body())
    for path in ("/healthz", "/readyz"):
        async with proxy.http.get(proxy.ops + path) as resp:
            assert resp.status == 200
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        text = await resp.text()
    assert (
        'tokenproxy_http_requests_total{client="checkout",method="POST",route="/v1/cards",'
        'status_class="2xx"}' in text
    )
    assert (
        'tokenproxy_partner_requests_total{operation="create_card",outcome="ok",partner="stripe"}'
        in text
    )
    assert "tokenproxy_vault_operation_duration_seconds_bucket" in text
    assert 'tokenproxy_tokens_created_total{kind="card"} 1.0' in text
    # The API listener does not serve metrics.
    status, _, _ = await proxy.request("GET", "/metrics")
    assert status == 404
