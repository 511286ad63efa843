"""tokenproxy_client against the real proxy, and its retry rules on a scripted server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from tokenproxy_sandbox.launcher import Localstripe, free_port

from tests.cards import VISA
from tests.conftest import RunningProxy
from tests.helpers import partner_get
from tokenproxy_client import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    CardError,
    ConflictError,
    IdempotencyError,
    NotFoundError,
    PartnerError,
    PartnerUnavailableError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
    TokenProxyClient,
    TokenProxyError,
)

FAST = RetryPolicy(max_retries=2, backoff=0.001, max_backoff=0.002)


def client_for(proxy: RunningProxy, name: str, **kwargs: Any) -> TokenProxyClient:
    """A client holding the named test client's key."""
    return TokenProxyClient(proxy.base, proxy.keys[name], retry=FAST, **kwargs)


# ------------------------------------------------------------- real proxy


async def test_tokenize_read_resolve_round_trip(proxy: RunningProxy) -> None:
    """A token made with the client reads masked for orders and resolves for billing."""
    async with client_for(proxy, "checkout") as checkout:
        card = await checkout.tokenize_card(
            VISA.number, 12, 2034, VISA.cvc, customer_ref="cus-77", metadata={"order": "A-1"}
        )
    assert card.token.startswith("vtok_card_")
    assert (card.brand, card.last4) == ("visa", VISA.number[-4:])
    assert card.created_at is not None
    async with client_for(proxy, "orders") as orders:
        view = await orders.read(card.token)
        assert view.masked == card.masked
        assert view.customer_ref == "cus-77"
        assert view.metadata == {"order": "A-1"}
        assert "partner_reference" not in view.raw
        with pytest.raises(PermissionDeniedError) as denied:
            await orders.resolve(card.token)
        assert denied.value.code == "missing_scope"
    async with client_for(proxy, "billing") as billing:
        resolved = await billing.resolve(card.token)
    assert resolved.partner == "stripe"
    assert resolved.partner_reference.startswith("pm_")
    assert resolved.last4 == VISA.number[-4:]


async def test_postal_code_goes_with_the_card(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """tokenize_card's postal_code reaches the PaymentMethod's billing address; a card-like
    one is a CardError naming the field."""
    async with client_for(proxy, "checkout") as checkout:
        card = await checkout.tokenize_card(VISA.number, 12, 2034, VISA.cvc, postal_code="75001")
        with pytest.raises(CardError) as refused:
            await checkout.tokenize_card(
                VISA.number, 12, 2034, VISA.cvc, postal_code=VISA.number[:12]
            )
    assert refused.value.code == "invalid_postal_code"
    async with client_for(proxy, "billing") as billing:
        resolved = await billing.resolve(card.token)
    _, pm = await partner_get(localstripe, f"/v1/payment_methods/{resolved.partner_reference}")
    assert pm["billing_details"]["address"]["postal_code"] == "75001"


async def test_errors_mirror_the_proxy_tree(proxy: RunningProxy) -> None:
    """401, 403, 404 and 422 become the matching exceptions with code and request id."""
    async with TokenProxyClient(proxy.base, "tpk_not_a_key", retry=FAST) as bad:
        with pytest.raises(AuthenticationError) as auth:
            await bad.read("vtok_card_x")
    assert auth.value.status == 401
    assert str(auth.value.request_id).startswith("req_")
    async with client_for(proxy, "checkout") as checkout:
        with pytest.raises(PermissionDeniedError):
            await checkout.read("vtok_card_x")
        with pytest.raises(CardError) as card:
            await checkout.tokenize_card(VISA.number[:-1] + "0", 12, 2034, VISA.cvc)
    assert (card.value.status, card.value.code, card.value.param) == (
        422,
        "invalid_number",
        "number",
    )
    assert VISA.number not in str(card.value)
    assert VISA.number not in repr(card.value.__dict__)
    async with client_for(proxy, "orders") as orders:
        with pytest.raises(NotFoundError) as missing:
            await orders.read("vtok_card_doesnotexist")
    assert missing.value.code == "resource_missing"
    assert isinstance(missing.value, TokenProxyError)


async def test_path_values_are_quoted(proxy: RunningProxy) -> None:
    """A token with slashes or dots cannot walk to another route: it is one quoted segment."""
    async with client_for(proxy, "orders") as orders:
        with pytest.raises(NotFoundError) as missing:
            await orders.read("../../openapi.json")
    assert missing.value.code == "resource_missing"


async def test_reused_idempotency_key_is_an_idempotency_error(proxy: RunningProxy) -> None:
    """The proxy's 422 for a key reused with another body raises IdempotencyError, unretried."""
    async with client_for(proxy, "checkout") as checkout:
        await checkout.tokenize_card(VISA.number, 12, 2034, VISA.cvc, idempotency_key="order-9")
        with pytest.raises(IdempotencyError) as reused:
            await checkout.tokenize_card(VISA.number, 11, 2034, VISA.cvc, idempotency_key="order-9")
    assert (reused.value.status, reused.value.code) == (422, "idempotency_key_reused")
    assert reused.value.type == "idempotency_error"


async def test_unreachable_proxy_is_a_connection_error() -> None:
    """Nothing listening: APIConnectionError after the retries, with our own message."""
    port = free_port()
    async with TokenProxyClient(f"http://127.0.0.1:{port}", "tpk_x", retry=FAST) as client:
        with pytest.raises(APIConnectionError) as exc:
            await client.read("vtok_card_x")
    assert "could not reach tokenproxy" in str(exc.value)
    assert not isinstance(exc.value, APITimeoutError)


def test_repr_hides_the_key() -> None:
    """The client's repr names the proxy, never the key."""
    client = TokenProxyClient("http://127.0.0.1:1", "tpk_secret_value")
    assert "tpk_secret_value" not in repr(client)
    with pytest.raises(ValueError, match="base_url"):
        TokenProxyClient("127.0.0.1:1", "k")


# ------------------------------------------------------- scripted server


@dataclass
class Scripted:
    """A loopback HTTP server answering from a script, recording what it received."""

    base: str
    script: list[tuple[int, dict[str, Any] | None, dict[str, str]]] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    """The scripted server on a free loopback port."""
    port = free_port()
    state = Scripted(base=f"http://127.0.0.1:{port}")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        state.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "body": body,
                "peer": peer,
            }
        )
        if state.delay:
            await asyncio.sleep(state.delay)
        status, payload, headers = state.script.pop(0)
        if payload is None:
            return web.Response(status=status, headers=headers)
        return web.json_response(payload, status=status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield state
    await runner.cleanup()


CARD_OK = {
    "token": "vtok_card_abc",
    "kind": "card",
    "brand": "visa",
    "last4": "4242",
    "masked": "424242******4242",
    "created_at": "2030-01-01T00:00:00Z",
}


def err(
    status: int, type_: str, code: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A scripted error answer shaped like the proxy's."""
    body = {
        "error": {
            "type": type_,
            "code": code,
            "message": "m",
            "param": None,
            "request_id": "req_scripted",
        }
    }
    return status, body, headers or {}


@pytest.mark.parametrize(
    "first",
    [
        err(503, "partner_error", "partner_unavailable"),
        err(503, "api_error", "vault_unavailable"),
        err(429, "rate_limit_error", "rate_limited", {"Retry-After": "0"}),
        err(409, "idempotency_error", "idempotency_key_in_use"),
    ],
    ids=["503-partner", "503-vault", "429", "409-in-use"],
)
async def test_post_retried_with_same_idempotency_key(
    scripted: Scripted, first: tuple[int, dict[str, Any], dict[str, str]]
) -> None:
    """A retryable answer is retried once with the same Idempotency-Key, then succeeds."""
    scripted.script = [first, (201, CARD_OK, {})]
    async with TokenProxyClient(scripted.base, "tpk_x", retry=FAST) as client:
        card = await client.tokenize_card(VISA.number, 12, 2034, VISA.cvc)
    assert card.token == "vtok_card_abc"
    keys = [s["headers"]["Idempotency-Key"] for s in scripted.seen]
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert len(keys[0]) >= 32


@pytest.mark.parametrize(
    ("answer", "exc"),
    [
        (err(400, "invalid_request_error", "missing_field"), TokenProxyError),
        (err(402, "card_error", "card_declined"), CardError),
        (err(409, "idempotency_error", "idempotency_key_reused"), IdempotencyError),
        (err(409, "invalid_request_error", "conflict"), ConflictError),
        (err(410, "idempotency_error", "idempotency_key_erased"), IdempotencyError),
        (err(502, "partner_error", "partner_auth_failed"), PartnerError),
        (err(504, "partner_error", "partner_timeout"), PartnerError),
        (err(500, "api_error", "internal_error"), TokenProxyError),
    ],
    ids=["400", "402", "409-reused", "409", "410-erased", "502", "504", "500"],
)
async def test_unsafe_answers_are_not_retried(
    scripted: Scripted, answer: tuple[int, dict[str, Any], dict[str, str]], exc: type[Exception]
) -> None:
    """Declines, conflicts, bad input and partner failures are raised at once, not retried."""
    scripted.script = [answer, (201, CARD_OK, {})]
    async with TokenProxyClient(scripted.base, "tpk_x", retry=FAST) as client:
        with pytest.raises(exc) as raised:
            await client.tokenize_card(VISA.number, 12, 2034, VISA.cvc)
    assert len(scripted.seen) == 1
    assert raised.value.request_id == "req_scripted"  # type: ignore[attr-defined]


async def test_retries_are_bounded(scripted: Scripted) -> None:
    """After max_retries the last error is raised (here 1 + 2 attempts of 503)."""
    scripted.script = [err(503, "partner_error", "partner_unavailable")] * 3
    async with TokenProxyClient(scripted.base, "tpk_x", retry=FAST) as client:
        with pytest.raises(PartnerUnavailableError):
            await client.read("vtok_card_x")
    assert len(scripted.seen) == 3


async def test_rate_limit_error_carries_retry_after(scripted: Scripted) -> None:
    """With retries off, a 429 surfaces as RateLimitError with its Retry-After."""
    scripted.script = [err(429, "rate_limit_error", "rate_limited", {"Retry-After": "7"})]
    no_retry = RetryPolicy(max_retries=0)
    async with TokenProxyClient(scripted.base, "tpk_x", retry=no_retry) as client:
        with pytest.raises(RateLimitError) as limited:
            await client.read("vtok_card_x")
    assert limited.value.retry_after == 7.0


def test_retry_after_is_obeyed_and_capped() -> None:
    """The wait before a retry is the proxy's Retry-After, capped; else jittered backoff."""
    policy = RetryPolicy(backoff=1.0, max_backoff=4.0, max_retry_after=10.0)
    asked = RateLimitError("m", status=429, headers={"Retry-After": "3"})
    assert policy.delay(0, asked) == 3.0
    greedy = RateLimitError("m", status=429, headers={"Retry-After": "3600"})
    assert policy.delay(0, greedy) == 10.0
    for attempt in range(6):
        assert 0 <= policy.delay(attempt, None) <= min(4.0, 2.0**attempt)


async def test_timeout_is_an_api_timeout_error(scripted: Scripted) -> None:
    """A proxy slower than the timeout gives APITimeoutError (after bounded retries)."""
    scripted.delay = 0.5
    scripted.script = [(200, {}, {})] * 2
    one_retry = RetryPolicy(max_retries=1, backoff=0.001)
    async with TokenProxyClient(scripted.base, "tpk_x", timeout=0.1, retry=one_retry) as client:
        with pytest.raises(APITimeoutError):
            await client.read("vtok_card_x")
    assert len(scripted.seen) == 2


async def test_each_logical_post_gets_its_own_key_and_connections_are_reused(
    scripted: Scripted,
) -> None:
    """Two calls get two Idempotency-Keys (GETs none) over one reused connection."""
    view = {"token": "vtok_card_abc", "kind": "card", "created_at": "2030-01-01T00:00:00Z"}
    scripted.script = [(201, CARD_OK, {}), (201, CARD_OK, {}), (200, view, {})]
    async with TokenProxyClient(scripted.base, "tpk_x", retry=FAST) as client:
        await client.tokenize_card(VISA.number, 12, 2034, VISA.cvc)
        await client.tokenize_card(VISA.number, 12, 2034, VISA.cvc, idempotency_key="mine-1")
        await client.read("vtok_card_abc")
    keys = [s["headers"].get("Idempotency-Key") for s in scripted.seen]
    assert keys[0] is not None
    assert keys[1] == "mine-1"
    assert keys[2] is None
    assert len({s["peer"] for s in scripted.seen}) == 1
    assert all(s["headers"]["Authorization"] == "Bearer tpk_x" for s in scripted.seen)


async def test_service_unavailable_class(scripted: Scripted) -> None:
    """503 api_error (vault down) is ServiceUnavailableError, 503 partner_error is the partner's."""
    scripted.script = [err(503, "api_error", "record_unreadable")]
    async with TokenProxyClient(scripted.base, "tpk_x", retry=RetryPolicy(max_retries=0)) as c:
        with pytest.raises(ServiceUnavailableError) as exc:
            await c.read("vtok_card_x")
    assert exc.value.code == "record_unreadable"


async def test_bank_account_post_is_retried_with_the_same_key(scripted: Scripted) -> None:
    """Bank-account POSTs are deduplicated by the proxy too: a 503 is retried, same key."""
    scripted.script = [
        err(503, "api_error", "vault_unavailable"),
        err(400, "invalid_request_error", "missing_field"),
    ]
    async with TokenProxyClient(scripted.base, "tpk_x", retry=FAST) as client:
        with pytest.raises(TokenProxyError):
            await client.tokenize_bank_account("DE89370400440532013000", "Greta Garbo")
    keys = [s["headers"]["Idempotency-Key"] for s in scripted.seen]
    assert len(keys) == 2
    assert keys[0] == keys[1]
