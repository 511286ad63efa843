"""The billing path end to end: checkout tokenizes, billing resolves and charges off-session.

Real parts only: the proxy on loopback (SQLite and PostgreSQL vaults), the client
library, the official stripe SDK, and the sandbox partner (localstripe behind the
front that keeps Stripe's rules, ``tokenproxy_sandbox.front``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import stripe
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe

from proxy.core.customers import open_pending
from proxy.domain.errors import InvalidRequest
from proxy.web.appkeys import SERVICES
from tests.conftest import RunningProxy, make_settings, running_proxy
from tests.helpers import MANDATE_ACCEPTANCE, partner_get
from tokenproxy_client import CardError, PermissionDeniedError, ResolvedToken, TokenProxyClient
from vault import Kind, NewRecord
from vault.audit import EventType

VISA = "4242424242424242"
DECLINED_AT_CHARGE = "4000000000000341"  # localstripe: attaches, declines every charge
NEEDS_3DS = "4000002760003184"  # localstripe: setup requires_action
IBAN = "DE89370400440532013000"
RETURN_URL = "https://shop.example/checkout/return"


@pytest.fixture
async def billing_proxy(
    tmp_path: Path,
    keyring_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
    vault_url: str,
) -> AsyncIterator[RunningProxy]:
    """The proxy on the test's backend (SQLite, then PostgreSQL), partner: the sandbox."""
    settings = make_settings(
        tmp_path, keyring_path, localstripe.base_url, {"TOKENPROXY_VAULT_URL": vault_url}
    )
    async with running_proxy(tmp_path, client_keys, settings) as running:
        yield running


def client(proxy: RunningProxy, name: str) -> TokenProxyClient:
    """The client library with the named test client's key."""
    return TokenProxyClient(proxy.base, proxy.keys[name])


def partner(localstripe: Localstripe) -> stripe.StripeClient:
    """What a billing service holds: the stripe SDK with its own key, at the sandbox."""
    return stripe.StripeClient(
        SANDBOX_API_KEY, base_addresses={"api": localstripe.base_url}, max_network_retries=0
    )


async def charge(
    localstripe: Localstripe, resolved: ResolvedToken, **extra: Any
) -> stripe.PaymentIntent:
    """Create and confirm an off-session PaymentIntent from what resolve returned, only."""
    params: dict[str, Any] = {
        "amount": 1990,
        "currency": "eur",
        "payment_method": resolved.partner_reference,
        "off_session": True,
        "confirm": True,
        **extra,
    }
    if resolved.partner_customer is not None:
        params["customer"] = resolved.partner_customer
    return await asyncio.to_thread(
        partner(localstripe).v1.payment_intents.create,
        params,  # type: ignore[arg-type]
    )


async def saved_card(proxy: RunningProxy, number: str, customer_ref: str) -> ResolvedToken:
    """Tokenize ``number`` for ``customer_ref`` as checkout, resolve it as billing."""
    async with client(proxy, "checkout") as checkout:
        card = await checkout.tokenize_card(number, 12, 2030, "123", customer_ref=customer_ref)
    async with client(proxy, "billing") as billing:
        return await billing.resolve(card.token)


async def test_saved_card_charges_off_session_with_what_resolve_returns(
    billing_proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """A card tokenized with a customer_ref is charged off-session from resolve's fields."""
    resolved = await saved_card(billing_proxy, VISA, "cus-billing-1")
    assert resolved.partner == "stripe"
    assert resolved.partner_reference.startswith("pm_")
    assert resolved.partner_customer is not None
    assert resolved.partner_customer.startswith("cus_")
    assert resolved.mandate_reference is None
    intent = await charge(localstripe, resolved)
    assert intent.status == "succeeded"
    assert intent.customer == resolved.partner_customer


async def test_partner_customer_is_the_customer_the_method_is_saved_on(
    billing_proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """partner_customer is the customer the partner has the method attached to, and needed."""
    resolved = await saved_card(billing_proxy, VISA, "cus-billing-2")
    status, pm = await partner_get(localstripe, f"/v1/payment_methods/{resolved.partner_reference}")
    assert status == 200
    assert pm["customer"] == resolved.partner_customer
    # Stripe refuses a customer's payment method on a PaymentIntent that names no customer.
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await asyncio.to_thread(
            partner(localstripe).v1.payment_intents.create,
            {
                "amount": 1990,
                "currency": "eur",
                "payment_method": resolved.partner_reference,
                "off_session": True,
                "confirm": True,
            },
        )
    assert "include the Customer" in str(refused.value.user_message)


async def test_decline_at_charge_time_is_what_billing_sees(
    billing_proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """A card saved fine but declined when charged raises the SDK's CardError (402)."""
    resolved = await saved_card(billing_proxy, DECLINED_AT_CHARGE, "cus-billing-3")
    with pytest.raises(stripe.CardError) as declined:
        await charge(localstripe, resolved)
    assert declined.value.http_status == 402
    assert declined.value.code == "card_declined"


async def test_sepa_account_saved_with_mandate_and_debited_off_session(
    billing_proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """A bank account saved with mandate acceptance resolves to pm, cus and mandate; debits."""
    async with client(billing_proxy, "checkout") as checkout:
        bank = await checkout.tokenize_bank_account(
            IBAN,
            "Greta Garbo",
            email="greta@example.se",
            customer_ref="cus-billing-sepa",
            mandate_acceptance=MANDATE_ACCEPTANCE,  # type: ignore[arg-type]
        )
    async with client(billing_proxy, "billing") as billing:
        resolved = await billing.resolve(bank.token)
    assert resolved.mandate_reference is not None
    assert resolved.mandate_reference.startswith("mandate_")
    status, mandate = await partner_get(localstripe, f"/v1/mandates/{resolved.mandate_reference}")
    assert status == 200
    assert mandate["status"] == "active"
    assert mandate["payment_method"] == resolved.partner_reference
    online = mandate["customer_acceptance"]["online"]
    assert online == {
        "ip_address": MANDATE_ACCEPTANCE["ip_address"],
        "user_agent": MANDATE_ACCEPTANCE["user_agent"],
    }
    _, pm = await partner_get(localstripe, f"/v1/payment_methods/{resolved.partner_reference}")
    assert pm["customer"] == resolved.partner_customer
    intent = await charge(
        localstripe,
        resolved,
        payment_method_types=["sepa_debit"],
        mandate=resolved.mandate_reference,
    )
    # SEPA debits settle later: Stripe reports them processing first.
    assert intent.status in {"processing", "succeeded"}

    # The acceptance evidence is in the audit trail, with the token, not in the record.
    events = await billing_proxy.app[SERVICES].vault.audit.events()
    accepted = [e for e in events if e.entry.event_type == EventType.MANDATE_ACCEPT]
    assert len(accepted) == 1
    assert accepted[0].entry.resource == bank.token
    assert MANDATE_ACCEPTANCE["user_agent"] in (accepted[0].entry.detail or "")
    record = await billing_proxy.app[SERVICES].vault.get(bank.token)
    assert MANDATE_ACCEPTANCE["ip_address"] not in str(record.payload())
    # One resolve, one audit event: it covers the method, the customer and the mandate.
    resolves = [e for e in events if e.entry.event_type == EventType.RESOLVE]
    assert [e.entry.resource for e in resolves] == [bank.token]


async def test_read_scope_sees_no_partner_ids(billing_proxy: RunningProxy) -> None:
    """A `read` client gets neither the payment method, the customer nor the mandate."""
    async with client(billing_proxy, "checkout") as checkout:
        card = await checkout.tokenize_card(VISA, 12, 2030, "123", customer_ref="cus-billing-4")
    status, view, _ = await billing_proxy.request(
        "GET", f"/v1/tokens/{card.token}", client="orders"
    )
    assert status == 200
    assert view is not None
    assert not {"partner_reference", "partner_customer", "mandate_reference"} & view.keys()
    async with client(billing_proxy, "orders") as orders:
        with pytest.raises(PermissionDeniedError):
            await orders.resolve(card.token)


async def test_resolve_names_the_customer_of_records_saved_without_it(
    billing_proxy: RunningProxy,
) -> None:
    """A record stored before records kept their partner customer resolves it by mapping."""
    vault = billing_proxy.app[SERVICES].vault
    await vault.put_partner_customer("cus-billing-old", "stripe", "cus_Legacy42")
    record = await vault.put(
        NewRecord(
            kind=Kind.CARD,
            partner="stripe",
            partner_reference="pm_Legacy42",
            details={"brand": "visa", "last4": "4242", "masked": "424242******4242"},
            customer_ref="cus-billing-old",
        )
    )
    async with client(billing_proxy, "billing") as billing:
        resolved = await billing.resolve(record.token)
    assert resolved.partner_customer == "cus_Legacy42"


# -- cards that need their holder (3-D Secure) -------------------------------------


async def tokenize_needing_3ds(proxy: RunningProxy, customer_ref: str) -> CardError:
    """POST a card that needs authentication to be saved; return the 402 it gets."""
    async with client(proxy, "checkout") as checkout:
        with pytest.raises(CardError) as needs:
            await checkout.tokenize_card(
                NEEDS_3DS, 12, 2030, "123", customer_ref=customer_ref, return_url=RETURN_URL
            )
    return needs.value


async def visit(url: str, **query: str) -> aiohttp.ClientResponse:
    """The shopper's browser opening next_action's page (no redirect followed)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, params=query, allow_redirects=False) as resp,
    ):
        await resp.read()
        return resp


async def test_card_needing_authentication_gets_no_token_until_confirmed(
    billing_proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """402 authentication_required with next_action; the token comes from confirm, after."""
    needs = await tokenize_needing_3ds(billing_proxy, "cus-3ds-1")
    assert needs.status == 402
    assert needs.code == "authentication_required"
    assert needs.setup
    assert needs.next_action is not None
    assert needs.next_action["type"] == "redirect_to_url"
    redirect = needs.next_action["redirect_to_url"]
    assert set(redirect) == {"url", "return_url"}
    assert redirect["return_url"] == RETURN_URL
    assert NEEDS_3DS not in str(needs.next_action)
    assert NEEDS_3DS[6:-4] not in needs.setup
    vault = billing_proxy.app[SERVICES].vault
    page = await vault.list_customer("cus-3ds-1", limit=10)
    assert page.records == []

    async with client(billing_proxy, "checkout") as checkout:
        # Before the shopper authenticated: still waiting, still no token.
        with pytest.raises(CardError) as waiting:
            await checkout.confirm_card(needs.setup)
        assert waiting.value.code == "authentication_required"
        assert (await vault.list_customer("cus-3ds-1", limit=10)).records == []

        back = await visit(redirect["url"])
        assert back.status == 302
        assert back.headers["Location"] == RETURN_URL

        card = await checkout.confirm_card(needs.setup)
    assert card.token.startswith("vtok_card_")
    assert card.last4 == NEEDS_3DS[-4:]
    async with client(billing_proxy, "billing") as billing:
        resolved = await billing.resolve(card.token)
    _, pm = await partner_get(localstripe, f"/v1/payment_methods/{resolved.partner_reference}")
    assert pm["customer"] == resolved.partner_customer is not None


async def test_authenticated_card_gets_the_token_its_partner_objects_name(
    billing_proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """After 3-D Secure, confirm stores the card under the token its PaymentMethod and
    SetupIntent already name at the partner; confirming again answers that same token."""
    needs = await tokenize_needing_3ds(billing_proxy, "cus-3ds-meta")
    assert needs.next_action is not None
    url = needs.next_action["redirect_to_url"]["url"]
    intent = url.rsplit("/", 1)[-1]
    _, setup = await partner_get(localstripe, f"/v1/setup_intents/{intent}")
    named = setup["metadata"]["vault_token"]
    await visit(url)
    async with client(billing_proxy, "checkout") as checkout:
        card = await checkout.confirm_card(needs.setup or "")
        again = await checkout.confirm_card(needs.setup or "")
    assert card.token == again.token == named
    _, pm = await partner_get(localstripe, f"/v1/payment_methods/{setup['payment_method']}")
    assert pm["metadata"] == {"vault_token": named}


async def test_failed_authentication_never_becomes_a_token(
    billing_proxy: RunningProxy,
) -> None:
    """A shopper who fails 3-D Secure gets 402 setup_failed on confirm, and no token."""
    needs = await tokenize_needing_3ds(billing_proxy, "cus-3ds-2")
    assert needs.next_action is not None
    await visit(needs.next_action["redirect_to_url"]["url"], result="fail")
    async with client(billing_proxy, "checkout") as checkout:
        with pytest.raises(CardError) as failed:
            await checkout.confirm_card(needs.setup or "")
    assert failed.value.code == "setup_failed"
    vault = billing_proxy.app[SERVICES].vault
    assert (await vault.list_customer("cus-3ds-2", limit=10)).records == []


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
async def test_a_setup_opens_only_for_the_client_that_made_it(
    billing_proxy: RunningProxy,
) -> None:
    """Another client's, a tampered or a made-up setup is 400 invalid_setup."""
    needs = await tokenize_needing_3ds(billing_proxy, "cus-3ds-3")
    setup = needs.setup or ""
    services = billing_proxy.app[SERVICES]
    assert open_pending(services, setup, "checkout").intent.startswith("seti_")
    with pytest.raises(InvalidRequest) as other:
        open_pending(services, setup, "another-checkout")
    assert other.value.code == "invalid_setup"
    middle = len(setup) // 2
    tampered = setup[:middle] + ("A" if setup[middle] != "A" else "B") + setup[middle + 1 :]
    for value in (tampered, "x", "!" * 40):
        status, body, _ = await billing_proxy.request(
            "POST", "/v1/cards/confirm", client="checkout", json={"setup": value}
        )
        assert status == 400, body
        assert body is not None
        assert body["error"]["code"] == "invalid_setup"  # type: ignore[index]


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
async def test_authentication_required_with_idempotency_keys(
    billing_proxy: RunningProxy,
) -> None:
    """With Idempotency-Keys: the 402 leaves the key free, and confirm answers once per key."""
    body = {
        "number": NEEDS_3DS,
        "exp_month": 12,
        "exp_year": 2030,
        "cvc": "123",
        "customer_ref": "cus-3ds-idem",
        "return_url": RETURN_URL,
    }
    headers = {"Idempotency-Key": "save-3ds-1"}
    answers = []
    for _ in range(2):
        status, answer, _ = await billing_proxy.request(
            "POST", "/v1/cards", client="checkout", json=body, headers=headers
        )
        assert status == 402, answer
        assert answer is not None
        answers.append(answer["error"])
    assert answers[0]["code"] == answers[1]["code"] == "authentication_required"
    setup = answers[0]["setup"]
    await visit(answers[0]["next_action"]["redirect_to_url"]["url"])
    tokens = set()
    for _ in range(2):
        status, card, _ = await billing_proxy.request(
            "POST",
            "/v1/cards/confirm",
            client="checkout",
            json={"setup": setup},
            headers={"Idempotency-Key": "confirm-3ds-1"},
        )
        assert status == 201, card
        assert card is not None
        tokens.add(card["token"])
    assert len(tokens) == 1
    vault = billing_proxy.app[SERVICES].vault
    assert [r.token for r in (await vault.list_customer("cus-3ds-idem", limit=10)).records] == [
        tokens.pop()
    ]
