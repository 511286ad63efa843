"""Every payment method the proxy makes names its vault token at the partner, never card data."""

from __future__ import annotations

from typing import Any

import pytest
from tokenproxy_sandbox.launcher import Localstripe

from tests.cards import VISA
from tests.conftest import RunningProxy
from tests.helpers import bank_body, create, partner_get, resolve
from tests.ibans import VALID
from tests.proxy.test_cards_api import card_body
from tests.sandbox_front import reset_front, script_fault


async def test_the_payment_method_names_its_vault_token(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """The PaymentMethod's metadata holds vault_token: the token the client was given."""
    status, created, _ = await proxy.request(
        "POST", "/v1/cards", client="checkout", json=card_body(customer_ref="cust-meta")
    )
    assert status == 201, created
    assert created is not None
    resolved = await resolve(proxy, str(created["token"]))
    _, pm = await partner_get(localstripe, f"/v1/payment_methods/{resolved['partner_reference']}")
    assert pm["metadata"] == {"vault_token": created["token"]}
    assert VISA.number not in str(pm["metadata"])
    unused = await create(proxy, "/v1/cards", card_body())
    assert unused["token"] != created["token"]


async def _metadata_of(localstripe: Localstripe, proxy: RunningProxy, token: str) -> object:
    """The metadata of the PaymentMethod behind ``token``, as the partner holds it."""
    resolved = await resolve(proxy, token)
    _, pm = await partner_get(localstripe, f"/v1/payment_methods/{resolved['partner_reference']}")
    return pm["metadata"]


async def _setup_of(localstripe: Localstripe, payment_method: str) -> dict[str, Any]:
    """The SetupIntent that saved ``payment_method``, as the partner holds it."""
    found: list[dict[str, Any]] = []
    path = "/v1/setup_intents?limit=100"
    while True:  # every test's setups share the session's partner: page through them all
        _, page = await partner_get(localstripe, path)
        found += [s for s in page["data"] if s.get("payment_method") == payment_method]
        if not page.get("has_more") or not page["data"]:
            break
        path = f"/v1/setup_intents?limit=100&starting_after={page['data'][-1]['id']}"
    assert len(found) == 1, found
    return found[0]


async def test_payment_method_made_under_a_client_key_names_its_token(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """With an Idempotency-Key the PaymentMethod names the token the client is given, and a
    replay of the key answers that same token."""
    tokens = []
    for _ in range(2):
        status, created, _ = await proxy.request(
            "POST",
            "/v1/cards",
            client="checkout",
            json=card_body(),
            headers={"Idempotency-Key": "meta-key-1"},
        )
        assert status == 201, created
        assert created is not None
        tokens.append(created["token"])
    assert tokens[0] == tokens[1]
    assert await _metadata_of(localstripe, proxy, str(tokens[0])) == {"vault_token": tokens[0]}


async def test_key_retried_after_a_partner_outage_names_the_same_token(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """A keyed request whose partner call failed for now is run again by the client's retry
    with the same reserved token: the PaymentMethod it makes names the token handed out."""
    await reset_front(localstripe)
    await script_fault(
        localstripe,
        "/v1/payment_methods",
        503,
        {"error": {"type": "api_error"}},
        times=proxy.settings.partner_max_retries + 1,
    )
    headers = {"Idempotency-Key": "meta-outage-1"}
    status, failed, _ = await proxy.request(
        "POST", "/v1/cards", client="checkout", json=card_body(), headers=headers
    )
    assert status in {502, 503}, failed
    status, created, _ = await proxy.request(
        "POST", "/v1/cards", client="checkout", json=card_body(), headers=headers
    )
    assert status == 201, created
    assert created is not None
    assert await _metadata_of(localstripe, proxy, str(created["token"])) == {
        "vault_token": created["token"]
    }
    await reset_front(localstripe)


@pytest.mark.parametrize("key", [None, "meta-bank-1"], ids=["no-key", "client-key"])
async def test_sepa_payment_method_names_its_token(
    proxy: RunningProxy, localstripe: Localstripe, key: str | None
) -> None:
    """A SEPA debit PaymentMethod names its vault token too, with or without a client key,
    and never the IBAN."""
    headers = {"Idempotency-Key": key} if key else {}
    status, created, _ = await proxy.request(
        "POST", "/v1/bank-accounts", client="checkout", json=bank_body(), headers=headers
    )
    assert status == 201, created
    assert created is not None
    metadata = await _metadata_of(localstripe, proxy, str(created["token"]))
    assert metadata == {"vault_token": created["token"]}
    assert VALID[0].iban not in str(metadata)


@pytest.mark.parametrize("key", [None, "meta-setup-1"], ids=["no-key", "client-key"])
async def test_setup_intent_names_the_saved_token(
    proxy: RunningProxy, localstripe: Localstripe, key: str | None
) -> None:
    """The SetupIntent that saves a card on a customer names the token it is saved under."""
    headers = {"Idempotency-Key": key} if key else {}
    status, created, _ = await proxy.request(
        "POST",
        "/v1/cards",
        client="checkout",
        json=card_body(customer_ref=f"cust-setup-{key}"),
        headers=headers,
    )
    assert status == 201, created
    assert created is not None
    resolved = await resolve(proxy, str(created["token"]))
    setup = await _setup_of(localstripe, str(resolved["partner_reference"]))
    assert setup["metadata"] == {"vault_token": created["token"]}


async def test_attached_single_use_card_setup_names_the_new_token(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """Saving a single-use card later: the SetupIntent names the new reusable token."""
    single = await create(proxy, "/v1/cards", card_body())
    status, saved, _ = await proxy.request(
        "POST",
        f"/v1/tokens/{single['token']}/attach",
        client="checkout",
        json={"customer_ref": "cust-attach-meta"},
    )
    assert status == 201, saved
    assert saved is not None
    assert saved["token"] != single["token"]
    resolved = await resolve(proxy, str(saved["token"]))
    setup = await _setup_of(localstripe, str(resolved["partner_reference"]))
    assert setup["metadata"] == {"vault_token": saved["token"]}
