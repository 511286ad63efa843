"""What saving for off-session use accepts: mandate acceptance, return_url, next_action."""

from __future__ import annotations

import string
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.domain.bank import MandateAcceptance, parse_mandate_acceptance
from proxy.domain.card import pan_like
from proxy.domain.errors import InvalidRequest
from proxy.domain.fields import validate_return_url
from proxy.partners.stripe import _next_action
from tests.conftest import RunningProxy
from tests.helpers import MANDATE_ACCEPTANCE, bank_body
from tests.proxy.test_cards_api import card_body

PAN = "4242424242424242"
NOW = 1_900_000_000.0
AT = "mandate_acceptance.accepted_at"


def acceptance(**changes: object) -> dict[str, object]:
    """A valid mandate_acceptance with ``changes`` (None removes a field)."""
    value = {**MANDATE_ACCEPTANCE, **changes}
    return {k: v for k, v in value.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "code", "param"),
    [
        ({"ip_address": "999.1.1.1"}, "invalid_ip_address", "mandate_acceptance.ip_address"),
        ({"ip_address": None}, "invalid_ip_address", "mandate_acceptance.ip_address"),
        ({"ip_address": 12}, "invalid_ip_address", "mandate_acceptance.ip_address"),
        ({"user_agent": ""}, "invalid_user_agent", "mandate_acceptance.user_agent"),
        ({"user_agent": "x" * 513}, "invalid_user_agent", "mandate_acceptance.user_agent"),
        ({"user_agent": f"Mozilla {PAN}"}, "invalid_user_agent", "mandate_acceptance.user_agent"),
        ({"user_agent": "Moz\nilla"}, "invalid_user_agent", "mandate_acceptance.user_agent"),
        ({"accepted_at": int(NOW) + 3600}, "invalid_accepted_at", "mandate_acceptance.accepted_at"),
        (
            {"accepted_at": int(NOW) - 2 * 86400},
            "invalid_accepted_at",
            "mandate_acceptance.accepted_at",
        ),
        ({"accepted_at": "yesterday"}, "invalid_accepted_at", "mandate_acceptance.accepted_at"),
        ({"accepted_at": True}, "invalid_accepted_at", "mandate_acceptance.accepted_at"),
        ({"device": "x"}, "unknown_field", "mandate_acceptance.device"),
    ],
)
def test_mandate_acceptance_is_validated(changes: dict[str, object], code: str, param: str) -> None:
    """Each malformed acceptance is refused with its own code, naming the field."""
    with pytest.raises(InvalidRequest) as refused:
        parse_mandate_acceptance(acceptance(**changes), now=NOW)
    assert refused.value.code == code
    assert refused.value.param == param
    assert PAN not in refused.value.message


def test_mandate_acceptance_defaults_to_now_and_normalises_the_address() -> None:
    """accepted_at defaults to the current second; an IPv6 address is kept canonical."""
    parsed = parse_mandate_acceptance(acceptance(ip_address="2001:DB8::0:1"), now=NOW)
    assert parsed == MandateAcceptance(
        "2001:db8::1", str(MANDATE_ACCEPTANCE["user_agent"]), int(NOW)
    )
    assert "2001" not in repr(parsed)
    assert "Mozilla" not in str(parsed)


@given(agent=st.text(min_size=1, max_size=80))
def test_an_accepted_user_agent_never_holds_a_card_number(agent: str) -> None:
    """Whatever user agent comes, one that is accepted is printable and holds no PAN."""
    try:
        parsed = parse_mandate_acceptance(acceptance(user_agent=agent), now=time.time())
    except InvalidRequest:
        return
    assert parsed.user_agent.isprintable()
    assert not pan_like(parsed.user_agent)


async def test_bank_account_needs_acceptance_with_a_customer(proxy: RunningProxy) -> None:
    """customer_ref without mandate_acceptance, or acceptance without customer, is 400."""
    body = bank_body(customer_ref="cus-mandate")
    del body["mandate_acceptance"]
    status, answer, _ = await proxy.request(
        "POST", "/v1/bank-accounts", client="checkout", json=body
    )
    assert status == 400
    assert answer is not None
    assert answer["error"]["param"] == "mandate_acceptance"  # type: ignore[index]
    status, answer, _ = await proxy.request(
        "POST",
        "/v1/bank-accounts",
        client="checkout",
        json=bank_body(mandate_acceptance=acceptance()),
    )
    assert status == 400
    assert answer is not None
    assert answer["error"]["param"] == "mandate_acceptance"  # type: ignore[index]


async def test_bad_acceptance_is_refused_before_the_partner_without_echo(
    proxy: RunningProxy,
) -> None:
    """A user agent holding a card number is 422 over HTTP, and the number is not echoed."""
    status, _, resp = await proxy.request(
        "POST",
        "/v1/bank-accounts",
        client="checkout",
        json=bank_body(customer_ref="cus-mandate", mandate_acceptance=acceptance(user_agent=PAN)),
    )
    assert status == 422
    assert PAN.encode() not in proxy.responses[-1]
    assert resp.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "ftp://shop.example/return",
        "/relative/return",
        "https://",
        "https://shop.example/ return",
        "https://shop.example/\u0007",
        f"https://shop.example/return?card={PAN}",
        "https://shop.example/" + "a" * 2048,
        42,
    ],
)
def test_return_url_must_be_an_absolute_web_url(url: Any) -> None:
    """Only absolute http(s) URLs without controls or card numbers are taken as return_url."""
    with pytest.raises(InvalidRequest) as refused:
        validate_return_url(url)
    assert refused.value.param == "return_url"
    assert PAN not in refused.value.message


async def test_return_url_is_checked_over_http(proxy: RunningProxy) -> None:
    """A bad return_url is refused before the card goes anywhere."""
    status, body, _ = await proxy.request(
        "POST", "/v1/cards", client="checkout", json=card_body(return_url="javascript:x")
    )
    assert status == 422
    assert body is not None
    assert body["error"]["code"] == "invalid_return_url"  # type: ignore[index]


def test_next_action_keeps_only_named_fields() -> None:
    """An SDK payload (client secrets, scripts) is reduced to its type; a redirect to URLs."""
    assert _next_action(
        {"type": "use_stripe_sdk", "use_stripe_sdk": {"stripe_js": "s", "client_secret": "x"}}
    ) == {"type": "use_stripe_sdk"}
    assert _next_action(
        {
            "type": "redirect_to_url",
            "redirect_to_url": {"url": "https://hooks.example/3ds", "return_url": "https://s/r"},
            "extra": {"card": PAN},
        }
    ) == {
        "type": "redirect_to_url",
        "redirect_to_url": {"url": "https://hooks.example/3ds", "return_url": "https://s/r"},
    }
    assert (
        _next_action({"type": "redirect_to_url", "redirect_to_url": {"url": f"https://x/{PAN}"}})
        is None
    )
    assert (
        _next_action({"type": "redirect_to_url", "redirect_to_url": {"url": "javascript:x"}})
        is None
    )
    assert _next_action({"type": "Bad Type"}) is None
    assert _next_action("redirect") is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(string.printable, max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(string.ascii_lowercase + "_", max_size=20), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    kind=st.sampled_from(["redirect_to_url", "use_stripe_sdk", "verify_with_microdeposits"]),
    redirect=st.dictionaries(
        st.sampled_from(["url", "return_url", "other"]),
        st.text(string.printable, max_size=60).map(lambda t: "https://p.example/" + t)
        | st.just("https://p.example/" + PAN)
        | _JSON,
        max_size=3,
    ),
    rest=st.dictionaries(st.text(string.ascii_lowercase, max_size=10), _JSON, max_size=3),
)
def test_next_action_never_passes_unknown_fields_or_card_numbers(
    kind: str, redirect: dict[str, Any], rest: dict[str, Any]
) -> None:
    """Whatever the partner sends, the checkout gets type and redirect URLs only, PAN-free."""
    action = _next_action({**rest, "type": kind, "redirect_to_url": redirect})
    assert action is None or action["type"] == kind
    if action is None:
        return
    assert set(action) <= {"type", "redirect_to_url"}
    urls = action.get("redirect_to_url", {})
    assert set(urls) <= {"url", "return_url"}
    assert not pan_like(str(action))
