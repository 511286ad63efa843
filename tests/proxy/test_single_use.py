"""Tokens saved on no customer are single-use at Stripe: shown so, deleted without a
detach Stripe would refuse, and saved on a customer by POST /v1/tokens/{token}/attach."""

from __future__ import annotations

from typing import Any

from tokenproxy_sandbox.launcher import Localstripe

from tests.cards import VISA
from tests.conftest import RunningProxy
from tests.helpers import create, partner_get, resolve
from tests.proxy.test_cards_api import card_body


async def attach(
    proxy: RunningProxy, token: str, body: dict[str, Any], client: str = "checkout"
) -> tuple[int, dict[str, Any]]:
    """POST /v1/tokens/{token}/attach; status and body."""
    status, payload, _ = await proxy.request(
        "POST", f"/v1/tokens/{token}/attach", client=client, json=body
    )
    assert payload is not None
    return status, payload


async def test_a_token_without_customer_is_marked_single_use(proxy: RunningProxy) -> None:
    """Without customer_ref the card is reusable: false; with one, reusable: true."""
    single = await create(proxy, "/v1/cards", card_body())
    saved = await create(proxy, "/v1/cards", card_body(customer_ref="cust-reuse"))
    assert single["reusable"] is False
    assert saved["reusable"] is True
    status, view, _ = await proxy.request("GET", f"/v1/tokens/{single['token']}", client="orders")
    assert status == 200
    assert view is not None
    assert view["reusable"] is False


async def test_a_single_use_token_is_deleted_without_a_detach(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """Stripe refuses to detach a method saved on no customer; deleting its token works."""
    single = await create(proxy, "/v1/cards", card_body())
    status, answer, _ = await proxy.request(
        "DELETE", f"/v1/tokens/{single['token']}", client="eraser"
    )
    assert status == 200, answer
    assert answer is not None
    assert answer["partner_detached"] is False
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{single['token']}", client="orders")
    assert status == 404


async def test_attach_saves_the_card_on_the_customer_under_a_reusable_token(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """The card is set up on the customer at the partner; a new reusable token replaces it."""
    single = await create(proxy, "/v1/cards", card_body())
    status, saved = await attach(proxy, single["token"], {"customer_ref": "cust-attach"})
    assert status == 201, saved
    assert saved["reusable"] is True
    assert saved["token"] != single["token"]
    resolved = await resolve(proxy, saved["token"])
    assert resolved["customer_ref"] == "cust-attach"
    _, pm = await partner_get(localstripe, f"/v1/payment_methods/{resolved['partner_reference']}")
    assert pm["customer"] == resolved["partner_customer"]
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{single['token']}", client="orders")
    assert status == 404
    # Saved now: deleting it detaches at the partner.
    status, deletion, _ = await proxy.request(
        "DELETE", f"/v1/tokens/{saved['token']}", client="eraser"
    )
    assert status == 200
    assert deletion is not None
    assert deletion["partner_detached"] is True


async def test_attach_to_the_same_customer_again_answers_the_saved_token(
    proxy: RunningProxy,
) -> None:
    """A token already on this customer answers its own view; on another customer, 409."""
    saved = await create(proxy, "/v1/cards", card_body(customer_ref="cust-one"))
    status, again = await attach(proxy, saved["token"], {"customer_ref": "cust-one"})
    assert (status, again["token"]) == (201, saved["token"])
    status, other = await attach(proxy, saved["token"], {"customer_ref": "cust-two"})
    assert (status, other["error"]["code"]) == (409, "conflict")


async def test_attach_needs_tokenize_and_a_customer_ref(proxy: RunningProxy) -> None:
    """A read client is 403 missing_scope; a body without customer_ref is refused."""
    single = await create(proxy, "/v1/cards", card_body())
    status, refused = await attach(proxy, single["token"], {"customer_ref": "c"}, client="orders")
    assert (status, refused["error"]["code"]) == (403, "missing_scope")
    status, missing = await attach(proxy, single["token"], {})
    assert status in (400, 422)
    assert missing["error"]["param"] == "customer_ref"
    status, _ = await attach(proxy, "vtok_card_nosuchtoken", {"customer_ref": "c"})
    assert status == 404
    # Refused before an Idempotency-Key is recorded: an empty or card-like customer_ref.
    for bad in ("", VISA.number):
        status, _, resp = await proxy.request(
            "POST",
            f"/v1/tokens/{single['token']}/attach",
            client="checkout",
            json={"customer_ref": bad},
            headers={"Idempotency-Key": f"attach-bad-{len(bad)}"},
        )
        assert status == 422, bad
        assert resp.headers.get("Idempotent-Replayed") is None
