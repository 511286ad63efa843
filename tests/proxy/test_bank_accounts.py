"""Bank accounts end to end: IBAN validation, SEPA debit at localstripe, what the vault keeps."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenproxy_sandbox.launcher import Localstripe

from proxy.domain.bank import MIN_HIDDEN_CHARS, national_bank_code
from proxy.domain.hazmat import Iban
from proxy.domain.iban import IBAN_LENGTHS
from proxy.web.appkeys import SERVICES
from tests.cards import card_like_run
from tests.conftest import RunningProxy
from tests.helpers import (
    MANDATE_ACCEPTANCE,
    bank_body,
    counted,
    create,
    metrics_text,
    partner_get,
    resolve,
)
from tests.ibans import VALID, IbanCase, with_check_digits
from vault.audit import EventType


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.country)
async def test_valid_iban_becomes_a_sepa_debit_token(
    proxy: RunningProxy, localstripe: Localstripe, case: IbanCase
) -> None:
    """A valid IBAN of each country gets a vtok_bank_ token with masked data only."""
    created = await create(proxy, "/v1/bank-accounts", bank_body(case, iban=case.printed))
    assert created["token"].startswith("vtok_bank_")
    assert created["kind"] == "bank"
    assert created["country"] == case.country
    assert created["last4"] == case.iban[-4:]
    assert created["masked"] == case.masked
    assert created["bank_code"] == case.bank_code
    assert case.iban not in str(created)
    assert case.hidden not in str(created)
    # The mandate id is a partner reference: not in the 201, not for `read`.
    assert "mandate_reference" not in created
    status, masked, _ = await proxy.request(
        "GET", f"/v1/tokens/{created['token']}", client="orders"
    )
    assert status == 200
    assert masked is not None
    assert "mandate_reference" not in masked

    resolved = await resolve(proxy, created["token"])
    assert resolved["partner"] == "stripe"
    assert resolved["partner_reference"].startswith("pm_")
    # No customer, so nothing saved for later: a SEPA PaymentMethod has no mandate of its own.
    assert resolved["mandate_reference"] is None
    assert "partner_customer" not in resolved
    status, pm = await partner_get(
        localstripe, f"/v1/payment_methods/{resolved['partner_reference']}"
    )
    assert status == 200
    assert pm["type"] == "sepa_debit"
    assert pm["sepa_debit"]["last4"] == case.iban[-4:]
    assert pm["billing_details"]["name"] == "Greta Garbo"
    assert pm["billing_details"]["email"] == "greta@example.se"


@pytest.mark.parametrize(
    ("iban", "status", "code"),
    [
        ("DE89370400440532013001", 422, "invalid_iban_checksum"),
        ("DE8937040044053201300", 422, "invalid_iban_length"),
        ("SE45500000000583982574661", 422, "invalid_iban_length"),
        ("XX89370400440532013000", 422, "unsupported_country"),
        ("DE89-3704-0044-0532-0130-00", 422, "invalid_iban"),
        ("GB82 WEST 1234 5698 7654 33", 422, "invalid_iban_checksum"),
        ("NL91ABNA0417164301", 422, "invalid_iban_checksum"),
        ("FR14 2004 1010 0505 0001 3M02 60", 422, "invalid_iban_length"),
        ("D" * 80, 422, "invalid_iban"),
        (37040044053201300, 400, "invalid_type"),
    ],
)
async def test_invalid_iban_never_reaches_the_partner(
    proxy: RunningProxy, iban: object, status: int, code: str
) -> None:
    """Checksum, length, country and shape errors are refused before any partner call."""
    got, body, _ = await proxy.request(
        "POST", "/v1/bank-accounts", client="checkout", json=bank_body(iban=iban)
    )
    assert got == status
    assert body is not None
    assert body["error"]["code"] == code  # type: ignore[index]
    assert body["error"]["param"] == "iban"  # type: ignore[index]
    assert str(iban).replace(" ", "") not in str(body).replace(" ", "")
    assert not counted(await metrics_text(proxy), "tokenproxy_partner_requests_total")


@pytest.mark.parametrize(
    ("override", "status", "code", "param"),
    [
        ({"holder_name": None}, 400, "missing_field", "holder_name"),
        ({"holder_name": "  "}, 422, "invalid_holder_name", "holder_name"),
        ({"holder_name": "Ada\nLovelace"}, 422, "invalid_holder_name", "holder_name"),
        ({"holder_name": VALID[0].iban}, 422, "invalid_holder_name", "holder_name"),
        ({"holder_name": "4242424242424242"}, 422, "invalid_holder_name", "holder_name"),
        ({"email": "not-an-email"}, 422, "invalid_email", "email"),
        ({"email": 7}, 400, "invalid_type", "email"),
        ({"customer_ref": "bad ref!"}, 422, "invalid_customer_ref", "customer_ref"),
        ({VALID[0].iban: "x"}, 400, "unknown_field", None),
        ({"iban": None}, 400, "missing_field", "iban"),
    ],
)
async def test_bank_body_rules(
    proxy: RunningProxy, override: dict[str, object], status: int, code: str, param: str | None
) -> None:
    """Holder name, email, customer_ref and unknown fields are checked; no IBAN echoed."""
    got, body, _ = await proxy.request(
        "POST", "/v1/bank-accounts", client="checkout", json=bank_body(**override)
    )
    assert got == status
    assert body is not None
    assert body["error"]["code"] == code  # type: ignore[index]
    assert body["error"]["param"] == param  # type: ignore[index]
    assert VALID[0].iban not in str(body)


async def test_bank_accounts_need_tokenize_scope(proxy: RunningProxy) -> None:
    """Read, resolve and invoice clients cannot create bank tokens."""
    for client in ("orders", "billing", "invoicer"):
        status, _, _ = await proxy.request(
            "POST", "/v1/bank-accounts", client=client, json=bank_body()
        )
        assert status == 403


async def test_bank_account_with_customer_is_attached(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """With a customer_ref the SEPA method is attached to the customer's partner customer."""
    created = await create(proxy, "/v1/bank-accounts", bank_body(customer_ref="cus-sepa-1"))
    assert created["customer_ref"] == "cus-sepa-1"
    reference = (await resolve(proxy, created["token"]))["partner_reference"]
    _, pm = await partner_get(localstripe, f"/v1/payment_methods/{reference}")
    assert pm["customer"].startswith("cus_")


async def test_a_shopper_address_that_reads_as_a_card_number_is_audited_as_its_digest(
    proxy: RunningProxy,
) -> None:
    """An IPv6 address whose four groups form a Luhn-valid run does not make saving the
    account fail: the mandate.accept event holds the address's ``ip_address:`` digest."""
    run = card_like_run()
    address = ":".join(run[i : i + 4] for i in range(0, 16, 4)) + "::"
    assert str(ipaddress.ip_address(address)) == address
    acceptance = {**MANDATE_ACCEPTANCE, "ip_address": address}
    body = bank_body(customer_ref="cus-sepa-v6", mandate_acceptance=acceptance)
    created = await create(proxy, "/v1/bank-accounts", body)
    vault = proxy.app[SERVICES].vault
    events = await vault.audit.events()
    [accepted] = [e for e in events if e.entry.event_type == EventType.MANDATE_ACCEPT]
    assert accepted.entry.resource == created["token"]
    detail = json.loads(accepted.entry.detail or "{}")
    assert detail["ip_address"] == vault.audit.digest("ip_address", address)
    assert detail["user_agent"] == MANDATE_ACCEPTANCE["user_agent"]
    assert not any(run in str(e.entry) for e in events)


@given(
    country=st.sampled_from(sorted(IBAN_LENGTHS)),
    alphabet=st.sampled_from(["0123456789", "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"]),
    data=st.data(),
)
def test_stored_fields_never_rebuild_an_iban(
    country: str, alphabet: str, data: st.DataObject
) -> None:
    """For any IBAN, bank code plus masked form leave at least MIN_HIDDEN_CHARS unknown."""
    bban = data.draw(
        st.text(
            alphabet=alphabet,
            min_size=IBAN_LENGTHS[country] - 4,
            max_size=IBAN_LENGTHS[country] - 4,
        )
    )
    iban = Iban(with_check_digits(country, bban))
    code = national_bank_code(iban)
    known = 4 + (len(code) if code else 0) + 4
    assert code is None or len(iban.value) - known >= MIN_HIDDEN_CHARS
    assert iban.masked == iban.value[:4] + "****" + iban.value[-4:]
    assert iban.value[4:-4] not in repr(iban)
