"""CORS on the tokenize routes and publishable keys, through the real server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cards import VISA
from tests.conftest import SHOP, RunningProxy, add_shop_key
from tests.proxy.test_cards_api import card_body

OTHER = "https://other.example"  # allowed for CORS, but not bound to the shop's key
EVIL = "https://evil.example"


@pytest.fixture
def proxy_env() -> dict[str, str]:
    """CORS for two shop origins; a small publishable burst so the limit is reachable."""
    return {
        "TOKENPROXY_CORS_ORIGINS": f"{SHOP}, {OTHER}",
        "TOKENPROXY_PUBLISHABLE_BURST": "3",
        "TOKENPROXY_PUBLISHABLE_RATE_PER_MINUTE": "1",
    }


@pytest.fixture
def client_keys(client_keys: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The standard clients plus two publishable keys bound to the shop's origin."""
    add_shop_key(client_keys, tmp_path)
    return add_shop_key(client_keys, tmp_path, "shop2")


def preflight_headers(origin: str, method: str = "POST", headers: str = "") -> dict[str, str]:
    """What a browser sends before a cross-origin POST with custom headers."""
    sent = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        sent["Access-Control-Request-Headers"] = headers
    return sent


async def test_preflight_from_allowed_origin_is_answered(proxy: RunningProxy) -> None:
    """A preflight from an allowlisted origin gets 204 with its origin, methods and headers."""
    status, _, resp = await proxy.request(
        "OPTIONS",
        "/v1/cards",
        headers=preflight_headers(SHOP, headers="authorization, content-type, idempotency-key"),
    )
    assert status == 204
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == SHOP
    assert h["Access-Control-Allow-Methods"] == "POST"
    allowed = {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")}
    assert allowed == {"authorization", "content-type", "idempotency-key"}
    assert h["Access-Control-Max-Age"] == "600"
    assert "Origin" in h["Vary"]
    assert "Access-Control-Allow-Credentials" not in h
    assert h["X-Request-Id"].startswith("req_")


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        (preflight_headers(EVIL), "origin_not_allowed"),
        (preflight_headers("null"), "origin_not_allowed"),
        (preflight_headers(SHOP + "/"), "origin_not_allowed"),
        (preflight_headers("https://SHOP.example.evil.example"), "origin_not_allowed"),
        (preflight_headers(SHOP, method="DELETE"), "cors_method_not_allowed"),
        (preflight_headers(SHOP, headers="authorization, x-debug"), "cors_header_not_allowed"),
    ],
)
async def test_preflight_refused(proxy: RunningProxy, headers: dict[str, str], code: str) -> None:
    """Another origin, method or header gets 403 and no Access-Control-Allow-Origin."""
    status, body, resp = await proxy.request("OPTIONS", "/v1/cards", headers=headers)
    assert status == 403
    assert body is not None
    assert body["error"]["code"] == code  # type: ignore[index]
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_plain_options_lists_methods(proxy: RunningProxy) -> None:
    """OPTIONS without CORS headers is not a preflight: it answers Allow and no CORS headers."""
    status, _, resp = await proxy.request("OPTIONS", "/v1/cards")
    assert status == 204
    assert resp.headers["Allow"] == "OPTIONS, POST"
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_actual_request_carries_cors_headers_for_allowed_origin(proxy: RunningProxy) -> None:
    """A tokenize call from an allowed origin exposes the answer (and errors) to that origin."""
    status, _, resp = await proxy.request(
        "POST", "/v1/cards", client="checkout", json=card_body(), headers={"Origin": SHOP}
    )
    assert status == 201
    assert resp.headers["Access-Control-Allow-Origin"] == SHOP
    assert "X-Request-Id" in resp.headers["Access-Control-Expose-Headers"]
    assert resp.headers["Vary"] == "Origin"
    status, body, resp = await proxy.request(
        "POST",
        "/v1/cards",
        client="checkout",
        json=card_body(number="4242424242424241"),
        headers={"Origin": OTHER},
    )
    assert status == 422
    assert body is not None
    assert body["error"]["code"] == "invalid_number"  # type: ignore[index]
    assert resp.headers["Access-Control-Allow-Origin"] == OTHER


async def test_actual_request_from_other_origin_gets_no_cors_headers(proxy: RunningProxy) -> None:
    """A request from an origin not on the list gets no CORS headers, only Vary: Origin."""
    _, _, resp = await proxy.request(
        "POST", "/v1/cards", client="checkout", json={}, headers={"Origin": EVIL}
    )
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert resp.headers["Vary"] == "Origin"


@pytest.mark.parametrize("path", ["/v1/tokens/vtok_card_x", "/openapi.json", "/elements/card"])
async def test_other_routes_are_never_cors_enabled(proxy: RunningProxy, path: str) -> None:
    """Reads, docs and the card page carry no CORS headers and refuse preflights."""
    _, _, resp = await proxy.request("GET", path, client="orders", headers={"Origin": SHOP})
    assert "Access-Control-Allow-Origin" not in resp.headers
    status, _, resp = await proxy.request("OPTIONS", path, headers=preflight_headers(SHOP, "GET"))
    assert status == 405
    assert not any(h.startswith("Access-Control-") for h in resp.headers)


async def test_publishable_key_tokenizes_from_its_origin(proxy: RunningProxy) -> None:
    """A pk_ key used from its bound origin tokenizes; the token resolves for billing."""
    status, created, _ = await proxy.request(
        "POST", "/v1/cards", client="shop", json=card_body(), headers={"Origin": SHOP}
    )
    assert status == 201
    assert created is not None
    status, view, _ = await proxy.request("GET", f"/v1/tokens/{created['token']}", client="billing")
    assert status == 200
    assert view is not None
    assert view["last4"] == VISA.number[-4:]
    assert str(view["partner_reference"]).startswith("pm_")


async def test_browser_sees_a_replay_as_a_replay(proxy: RunningProxy) -> None:
    """A checkout page retrying with its Idempotency-Key may read Idempotent-Replayed, and the
    replay has the fresh answer's Content-Type and bytes."""
    headers = {"Origin": SHOP, "Idempotency-Key": "checkout-retry-1"}
    answers = []
    for _ in range(2):
        status, _, resp = await proxy.request(
            "POST", "/v1/cards", client="shop", json=card_body(), headers=headers
        )
        assert status == 201
        answers.append((proxy.responses[-1], resp.headers))
    (first, fresh), (again, replay) = answers
    assert again == first
    assert replay["Idempotent-Replayed"] == "true"
    exposed = {h.strip() for h in replay["Access-Control-Expose-Headers"].split(",")}
    assert "Idempotent-Replayed" in exposed
    assert replay["Content-Type"] == fresh["Content-Type"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": EVIL},
        {"Origin": OTHER},
        {"Origin": "null"},
        {"Origin": SHOP + ":8443"},
        {"Origin": SHOP.replace("https", "http")},
    ],
    ids=["no-origin", "evil", "other-allowed-origin", "null", "other-port", "http"],
)
async def test_publishable_key_refused_from_other_origins(
    proxy: RunningProxy, headers: dict[str, str]
) -> None:
    """A pk_ key without an Origin, or from any origin it is not bound to, gets 403."""
    status, body, _ = await proxy.request(
        "POST", "/v1/cards", client="shop", json=card_body(), headers=headers
    )
    assert status == 403
    assert body is not None
    assert body["error"]["code"] == "origin_not_allowed"  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/v1/cards", {"customer_ref": "victim-42"}),
        ("/v1/cards", {"metadata": {"order": "A-1"}}),
        ("/v1/bank-accounts", {"customer_ref": "victim-42"}),
    ],
)
async def test_publishable_key_cannot_choose_a_customer(
    proxy: RunningProxy, path: str, extra: dict[str, object]
) -> None:
    """A pk_ key (public, Origin forgeable off-browser) cannot attach to a customer: 403."""
    body = card_body() if path == "/v1/cards" else {"iban": "DE89370400440532013000"}
    status, answer, _ = await proxy.request(
        "POST", path, client="shop", json={**body, **extra}, headers={"Origin": SHOP}
    )
    assert status == 403
    assert answer is not None
    assert answer["error"]["code"] == "publishable_key_restricted"  # type: ignore[index]
    status, listing, _ = await proxy.request(
        "GET", "/v1/customers/victim-42/tokens", client="orders"
    )
    assert status == 200
    assert listing is not None
    assert listing["data"] == []


async def test_publishable_key_cannot_save_a_token_on_a_customer(proxy: RunningProxy) -> None:
    """POST /v1/tokens/{token}/attach picks a customer: 403 for a pk_ key, from any origin."""
    status, answer, _ = await proxy.request(
        "POST",
        "/v1/tokens/vtok_card_x/attach",
        client="shop",
        json={"customer_ref": "victim-42"},
        headers={"Origin": SHOP},
    )
    assert status == 403
    assert answer is not None
    assert answer["error"]["code"] in {"publishable_key_restricted", "origin_not_allowed"}


async def test_publishable_key_cannot_read(proxy: RunningProxy) -> None:
    """A pk_ key holds only tokenize: reading a token is 403 missing_scope."""
    status, body, _ = await proxy.request(
        "GET", "/v1/tokens/vtok_card_x", client="shop", headers={"Origin": SHOP}
    )
    assert status == 403
    assert body is not None
    assert body["error"]["code"] == "missing_scope"  # type: ignore[index]


@pytest.mark.parametrize(
    ("checkout_origin", "status"),
    [(SHOP, 201), (EVIL, 403), (None, 403)],
)
async def test_hosted_fields_frame_names_its_checkout_origin(
    proxy: RunningProxy, checkout_origin: str | None, status: int
) -> None:
    """From the proxy's own page, the origin checked is the one the card frame names."""
    headers = {"Origin": proxy.base, "Sec-Fetch-Site": "same-origin"}
    if checkout_origin:
        headers["TokenProxy-Checkout-Origin"] = checkout_origin
    got, _, _ = await proxy.request(
        "POST", "/v1/cards", client="shop", json=card_body(), headers=headers
    )
    assert got == status


async def test_publishable_key_is_rate_limited_per_key(proxy: RunningProxy) -> None:
    """Past its burst a pk_ key gets 429 with Retry-After; another key and secret keys do not."""
    for _ in range(3):
        status, _, _ = await proxy.request(
            "POST", "/v1/cards", client="shop", json={}, headers={"Origin": SHOP}
        )
        assert status == 400  # authenticated and counted; the empty body is refused after
    status, body, resp = await proxy.request(
        "POST", "/v1/cards", client="shop", json={}, headers={"Origin": SHOP}
    )
    assert status == 429
    assert body is not None
    assert body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert resp.headers["Access-Control-Allow-Origin"] == SHOP
    assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
    status, _, _ = await proxy.request(
        "POST", "/v1/cards", client="shop2", json={}, headers={"Origin": SHOP}
    )
    assert status == 400
    for _ in range(5):
        status, _, _ = await proxy.request("POST", "/v1/cards", client="checkout", json={})
        assert status == 400
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        assert 'tokenproxy_auth_failures_total{reason="rate_limited"} 1.0' in await resp.text()
