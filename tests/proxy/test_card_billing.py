"""The card's billing postal code and Stripe's allow_redisplay on the PaymentMethod."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import structlog
from tokenproxy_sandbox.launcher import Localstripe

from proxy.domain.requests import parse_card_request
from proxy.infra.settings import Settings, SettingsError
from tests.cards import VISA
from tests.conftest import RunningProxy, make_settings, running_proxy
from tests.helpers import bank_body, partner_get, resolve
from tests.proxy.test_cards_api import card_body


async def _payment_method(
    proxy: RunningProxy, localstripe: Localstripe, body: dict[str, object]
) -> dict[str, object]:
    """Tokenize ``body`` and read its PaymentMethod back from the partner."""
    status, created, _ = await proxy.request("POST", "/v1/cards", client="checkout", json=body)
    assert status == 201, created
    assert created is not None
    resolved = await resolve(proxy, str(created["token"]))
    _, pm = await partner_get(localstripe, f"/v1/payment_methods/{resolved['partner_reference']}")
    return pm  # type: ignore[no-any-return]


async def test_postal_code_goes_to_the_partner_address_only(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """A postal code reaches the PaymentMethod's billing_details.address, not the logs or
    the token's views."""
    with structlog.testing.capture_logs() as logs:
        pm = await _payment_method(
            proxy, localstripe, card_body(postal_code="SW1A 1AA", holder_name="Ada Lovelace")
        )
    billing = pm["billing_details"]
    assert billing["address"]["postal_code"] == "SW1A 1AA"  # type: ignore[index]
    assert billing["name"] == "Ada Lovelace"  # type: ignore[index]
    assert "SW1A" not in repr(logs)
    assert not any(b"SW1A" in raw for raw in proxy.responses)


def test_postal_code_is_redacted_from_the_request_text() -> None:
    """A parsed card request prints its postal code as *** (it is personal data)."""
    card = parse_card_request(card_body(postal_code="SW1A 1AA"), today=date(2026, 1, 1))
    assert card.postal_code == "SW1A 1AA"
    assert "SW1A" not in repr(card)
    assert "postal_code='***'" in str(card)


async def test_no_postal_code_sends_no_address(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """Without a postal code the PaymentMethod carries no billing address from the proxy."""
    pm = await _payment_method(proxy, localstripe, card_body())
    billing = pm.get("billing_details") or {}
    assert not (billing.get("address") or {}).get("postal_code")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    [
        "",
        " 12345",
        "12345 ",
        "A" * 13,
        "12345678901",  # 11 digits: no postal code has as many
        "1234-5678-901",
        "\uff33\uff37\uff11",  # full-width
        "SW1A\n1AA",
        "75001;DROP",
        VISA.number,
        VISA.number[:12],
    ],
    ids=[
        "empty",
        "leading-space",
        "trailing-space",
        "too-long",
        "eleven-digits",
        "digits-with-dashes",
        "full-width",
        "newline",
        "punctuation",
        "card-number",
        "card-prefix",
    ],
)
async def test_invalid_postal_code_is_refused_without_echo(proxy: RunningProxy, value: str) -> None:
    """A postal code outside 1-12 letters, digits, spaces and dashes (at most 10 digits) is
    422 invalid_postal_code, and the answer never repeats it."""
    status, body, _ = await proxy.request(
        "POST", "/v1/cards", client="checkout", json=card_body(postal_code=value)
    )
    assert status == 422, body
    assert body is not None
    assert body["error"]["code"] == "invalid_postal_code"  # type: ignore[index]
    assert body["error"]["param"] == "postal_code"  # type: ignore[index]
    if value.strip():
        assert value.strip() not in str(body)


@pytest.mark.parametrize(
    "value", ["75001", "10115", "SW1A 1AA", "12345-6789", "K1A 0B1", "1193653471"]
)
async def test_postal_codes_of_many_countries_are_taken(
    proxy: RunningProxy, localstripe: Localstripe, value: str
) -> None:
    """French, German, British, US ZIP+4, Canadian and Iranian postal codes are taken."""
    pm = await _payment_method(proxy, localstripe, card_body(postal_code=value))
    assert pm["billing_details"]["address"]["postal_code"] == value  # type: ignore[index]


async def test_stripe_default_redisplay_is_not_sent(
    proxy: RunningProxy, localstripe: Localstripe
) -> None:
    """By default the proxy sends no allow_redisplay and the method keeps Stripe's unspecified."""
    assert proxy.settings.allow_redisplay == "unspecified"
    pm = await _payment_method(proxy, localstripe, card_body())
    assert pm["allow_redisplay"] == "unspecified"


@pytest.mark.parametrize("value", ["limited", "always"])
async def test_allow_redisplay_setting_reaches_the_payment_method(
    tmp_path: Path,
    keyring_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
    value: str,
) -> None:
    """TOKENPROXY_ALLOW_REDISPLAY=limited/always is set on every card and SEPA PaymentMethod."""
    settings = make_settings(
        tmp_path, keyring_path, localstripe.base_url, {"TOKENPROXY_ALLOW_REDISPLAY": value}
    )
    async with running_proxy(tmp_path, client_keys, settings) as proxy:
        pm = await _payment_method(proxy, localstripe, card_body(customer_ref="cust-redisplay"))
        assert pm["allow_redisplay"] == value
        status, bank, _ = await proxy.request(
            "POST", "/v1/bank-accounts", client="checkout", json=bank_body()
        )
        assert status == 201, bank
        assert bank is not None
        resolved = await resolve(proxy, str(bank["token"]))
        _, sepa = await partner_get(
            localstripe, f"/v1/payment_methods/{resolved['partner_reference']}"
        )
        assert sepa["allow_redisplay"] == value


@pytest.mark.parametrize("value", ["", "never", "ALWAYS!", "true"])
def test_invalid_allow_redisplay_is_refused(tmp_path: Path, keyring_path: Path, value: str) -> None:
    """TOKENPROXY_ALLOW_REDISPLAY takes only Stripe's three values."""
    with pytest.raises(SettingsError, match="TOKENPROXY_ALLOW_REDISPLAY"):
        make_settings(
            tmp_path, keyring_path, "http://127.0.0.1:9", {"TOKENPROXY_ALLOW_REDISPLAY": value}
        )


def test_allow_redisplay_is_read_case_blind(tmp_path: Path, keyring_path: Path) -> None:
    """The setting's value is read without regard to case or surrounding space."""
    settings: Settings = make_settings(
        tmp_path, keyring_path, "http://127.0.0.1:9", {"TOKENPROXY_ALLOW_REDISPLAY": " Limited "}
    )
    assert settings.allow_redisplay == "limited"
