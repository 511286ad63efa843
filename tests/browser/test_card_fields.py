"""The hosted card fields in a real browser: token to the allowed page only, nothing else."""

from __future__ import annotations

import asyncio
import io
import json
import random
from datetime import date
from pathlib import Path
from typing import Any

from tokenproxy_sandbox.launcher import Localstripe

from proxy.domain.card import detect_brand, luhn_valid
from proxy.domain.errors import ValidationFailed
from proxy.domain.requests import parse_card_request
from tests.browser.conftest import CheckoutSite
from tests.cards import PARTNER_CARDS, VISA, luhn_complete
from tests.conftest import RunningProxy
from tests.helpers import partner_get, resolve
from tests.proxy.test_cards_api import card_body
from tokenproxy_client import TokenProxyClient


async def tokens_created(proxy: RunningProxy) -> float:
    """The proxy's tokens_created_total for cards, read from the ops listener."""
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith('tokenproxy_tokens_created_total{kind="card"}'):
                return float(line.split()[-1])
    return 0.0


async def type_card(page: Any, number: str, expiry: str, cvc: str) -> Any:
    """Type into the card frame key by key, as a shopper would; returns the frame locator."""
    frame = page.frame_locator("#card iframe")
    await frame.locator("#number").press_sequentially(number, delay=5)
    await frame.locator("#expiry").press_sequentially(expiry, delay=5)
    await frame.locator("#cvc").press_sequentially(cvc, delay=5)
    return frame


async def test_allowed_checkout_gets_a_token_that_billing_resolves(
    browser: Any, checkout: CheckoutSite, proxy: RunningProxy, artifacts: Path
) -> None:
    """Typed card -> frame posts to the proxy -> page gets only {token, brand, last4}."""
    page = await browser.new_page()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))  # noqa: PLW0108 - Playwright sets an attribute on handlers; a bound builtin refuses it
    await page.goto(checkout.allowed + "/")
    frame = await type_card(page, VISA.number, "1234", VISA.cvc)
    assert await frame.locator("#brand").text_content() == "visa"
    assert await frame.locator("#number").input_value() == " ".join(
        VISA.number[i : i + 4] for i in range(0, 16, 4)
    )
    assert await frame.locator("#expiry").input_value() == "12 / 34"
    await page.click("#pay")
    await page.wait_for_function("window.received.length === 1", timeout=15000)
    await page.screenshot(path=str(artifacts / "checkout-token.png"), full_page=True)
    assert await frame.locator("#number").input_value() == ""
    assert await frame.locator("#cvc").input_value() == ""
    assert await frame.locator("#form-status").text_content() == (
        f"Card ending {VISA.number[-4:]} saved."
    )

    received = await page.evaluate("window.received")
    assert len(received) == 1
    result = received[0]
    assert set(result) == {"token", "brand", "last4"}
    assert result["token"].startswith("vtok_card_")
    assert (result["brand"], result["last4"]) == ("visa", VISA.number[-4:])

    # Nothing the page received, from anyone, holds card data.
    everything = json.dumps(await page.evaluate("window.messages"))
    assert VISA.number not in everything
    assert VISA.number[6:12] not in everything
    assert VISA.cvc not in json.dumps(received)
    # The page's scripts cannot reach into the frame: it is another origin.
    assert await page.evaluate("document.querySelector('#card iframe').contentDocument") is None

    # The card went from the frame (proxy origin) to the proxy, naming the checkout origin.
    posts = [r for r in requests if r.method == "POST" and r.url.endswith("/v1/cards")]
    assert len(posts) == 1
    assert posts[0].frame != page.main_frame
    headers = await posts[0].all_headers()
    assert headers["origin"] == proxy.base
    assert headers["tokenproxy-checkout-origin"] == checkout.allowed
    assert headers["authorization"].startswith("Bearer pk_")
    assert headers["idempotency-key"]

    async with TokenProxyClient(proxy.base, proxy.keys["billing"]) as billing:
        resolved = await billing.resolve(result["token"])
    assert resolved.partner_reference.startswith("pm_")
    assert resolved.last4 == VISA.number[-4:]
    await page.close()


async def test_other_origin_gets_nothing(
    browser: Any, checkout: CheckoutSite, proxy: RunningProxy, artifacts: Path
) -> None:
    """A page on a non-allowed origin cannot frame the fields nor call the proxy directly."""
    before = await tokens_created(proxy)
    page = await browser.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    await page.goto(checkout.other + "/")
    await page.wait_for_timeout(1000)
    # frame-ancestors: Chromium refuses to render the card page inside this origin.
    frames = [f for f in page.frames if f != page.main_frame]
    assert len(frames) == 1
    assert await frames[0].query_selector("#number") is None
    # The page's own script trying the publishable key directly: CORS hides the answer,
    # and the proxy refuses the origin anyway.
    outcome = await page.evaluate(
        """async ([url, key, number, cvc]) => {
            try {
                const r = await fetch(url, {method: "POST", headers: {
                    "Authorization": "Bearer " + key, "Content-Type": "application/json"},
                    body: JSON.stringify({number, exp_month: 12, exp_year: 2034, cvc})});
                return "status " + r.status;
            } catch (e) { return "blocked"; }
        }""",
        [proxy.base + "/v1/cards", proxy.keys["shop"], VISA.number, VISA.cvc],
    )
    assert outcome == "blocked"
    await page.click("#pay")
    await page.wait_for_timeout(500)
    await page.screenshot(path=str(artifacts / "checkout-other-origin.png"), full_page=True)
    assert await page.evaluate("window.received") == []
    assert not [m for m in await page.evaluate("window.messages") if m["origin"] == proxy.base]
    assert await tokens_created(proxy) == before
    await page.close()


async def test_bad_number_shows_inline_error_and_sends_nothing(
    browser: Any, checkout: CheckoutSite, proxy: RunningProxy, artifacts: Path
) -> None:
    """A number failing Luhn is flagged as typed; submitting reports it and sends no request."""
    page = await browser.new_page()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))  # noqa: PLW0108 - Playwright sets an attribute on handlers; a bound builtin refuses it
    await page.goto(checkout.allowed + "/")
    bad = VISA.number[:-1] + str((int(VISA.number[-1]) + 1) % 10)
    frame = await type_card(page, bad, "1234", VISA.cvc)
    error = frame.locator("#number-error")
    assert await error.text_content() == "Your card number is invalid."
    assert await frame.locator("#number").get_attribute("aria-invalid") == "true"
    # The error is announced: tied to the field and in a live region.
    assert "number-error" in str(await frame.locator("#number").get_attribute("aria-describedby"))
    assert await error.get_attribute("aria-live") == "polite"
    await page.click("#pay")
    await page.wait_for_function("window.errors.length === 1", timeout=10000)
    await page.screenshot(path=str(artifacts / "checkout-bad-number.png"), full_page=True)
    assert await page.evaluate("window.errors") == [
        {"type": "validation_error", "code": "invalid_number"}
    ]
    await _nothing_sent(page, requests)
    await page.close()


async def test_expired_card_and_short_cvc_flagged(
    browser: Any, checkout: CheckoutSite, proxy: RunningProxy
) -> None:
    """An expired date and a 3-digit amex CVC get their inline messages; labels name fields."""
    page = await browser.new_page()
    await page.goto(checkout.allowed + "/")
    amex = luhn_complete("37828224631000")
    frame = await type_card(page, amex, "0120", "123")
    assert await frame.locator("#brand").text_content() == "amex"
    assert await frame.locator("#expiry-error").text_content() == "Your card has expired."
    await frame.locator("#number").focus()  # blur the CVC: incomplete is an error now
    assert "incomplete" in str(await frame.locator("#cvc-error").text_content())
    for field, label in [
        ("number", "Card number"),
        ("expiry", "Expiry date (MM / YY)"),
        ("cvc", "Security code (CVC)"),
    ]:
        assert await frame.get_by_label(label, exact=True).get_attribute("id") == field
    await page.close()


async def test_frame_rules_match_server_rules(browser: Any, proxy: RunningProxy) -> None:
    """The frame's Luhn and brand detection agree with proxy/domain/card.py on many numbers."""
    rng = random.Random(8)
    prefixes = [
        "4",
        "51",
        "2221",
        "2720",
        "34",
        "37",
        "300",
        "36",
        "3528",
        "6011",
        "644",
        "65",
        "62",
        "81",
        "5018",
        "6759",
        "1",
        "99",
        "3",
    ]
    numbers = [c.number for c in PARTNER_CARDS]
    for prefix in prefixes:
        for length in (12, 13, 14, 15, 16, 19):
            body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix)))
            numbers += [body, luhn_complete(body[:-1])]
    page = await browser.new_page()
    await page.goto(proxy.base + "/elements/card")
    got = await page.evaluate(
        "ns => ns.map(n => [TokenProxyCardRules.luhn(n), TokenProxyCardRules.detectBrand(n)])",
        numbers,
    )
    assert got == [[luhn_valid(n), detect_brand(n)] for n in numbers]
    # Opened on its own (not framed by an allowed page) the form stays disabled.
    assert await page.locator("#number").is_disabled()
    await page.close()
    await asyncio.sleep(0)


async def test_authentication_required_reaches_the_page_with_next_action_only(
    browser: Any, checkout: CheckoutSite, proxy: RunningProxy
) -> None:
    """A 402 authentication_required gives onError its code, setup and named next_action."""
    page = await browser.new_page()
    await _answer_cards_with(
        page,
        402,
        kind="card_error",
        code="authentication_required",
        message="The card issuer requires the cardholder to authenticate.",
        setup="sealed-setup",
        next_action={
            "type": "redirect_to_url",
            "redirect_to_url": {
                "url": "https://hooks.example/3ds/seti_1",
                "return_url": "https://shop.example/return",
                "client_secret": "seti_1_secret_x",
            },
            "use_stripe_sdk": {"stripe_js": "https://js.example"},
        },
    )
    await page.goto(checkout.allowed + "/")
    frame = await type_card(page, VISA.number, "1234", VISA.cvc)
    await page.click("#pay")
    await page.wait_for_function("window.errors.length === 1", timeout=10000)
    assert await page.evaluate("window.errors") == [
        {"type": "card_error", "code": "authentication_required"}
    ]
    assert await page.evaluate("window.actions") == [
        {
            "setup": "sealed-setup",
            "nextAction": {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "url": "https://hooks.example/3ds/seti_1",
                    "return_url": "https://shop.example/return",
                },
            },
        }
    ]
    assert await frame.locator("#form-status").text_content() == (
        "Your bank needs to confirm it is you."
    )
    await page.close()


async def _answer_cards_with(
    page: Any,
    status: int,
    *,
    kind: str,
    code: str,
    message: str,
    param: str | None = None,
    **more: Any,
) -> None:
    """Have the page's POST /v1/cards answered, not by the proxy, with ``status`` and the
    proxy's error body (``more``: its extra fields)."""
    answer = {
        "error": {
            "type": kind,
            "code": code,
            "message": message,
            "param": param,
            "request_id": "req_test",
            **more,
        }
    }

    async def fulfill(route: Any) -> None:
        await route.fulfill(
            status=status,
            content_type="application/json",
            body=json.dumps(answer),
            headers={"Access-Control-Allow-Origin": "*"},
        )

    await page.route("**/v1/cards", fulfill)


async def _nothing_sent(page: Any, requests: list[Any]) -> None:
    """The page got no token, and nothing reached the proxy's API."""
    assert await page.evaluate("window.received") == []
    assert not [r for r in requests if "/v1/" in r.url]


def _posted_cards(requests: list[Any]) -> list[Any]:
    """The POST /v1/cards requests among those the page made (its frame included)."""
    return [r for r in requests if r.method == "POST" and r.url.endswith("/v1/cards")]


async def _postal_code_kept_nowhere(
    proxy: RunningProxy,
    localstripe: Localstripe,
    token: str,
    postal_code: str,
    logged: str,
) -> None:
    """The card's PaymentMethod carries ``postal_code``; the vault, the token's views and the
    proxy's log lines do not."""
    resolved = await resolve(proxy, token)
    _, pm = await partner_get(localstripe, f"/v1/payment_methods/{resolved['partner_reference']}")
    assert pm["billing_details"]["address"]["postal_code"] == postal_code
    assert postal_code not in json.dumps(resolved)
    vault_files = list(proxy.vault_path.parent.glob(proxy.vault_path.name + "*"))
    assert vault_files
    assert not [f for f in vault_files if postal_code.encode() in f.read_bytes()]
    assert "/v1/cards" in logged  # the request was logged: the next line looks at something
    assert postal_code not in logged


async def test_postal_code_field_refuses_empty_and_invalid_values_in_the_frame(
    browser: Any, checkout: CheckoutSite, proxy: RunningProxy
) -> None:
    """With postalCode: true a labelled Postal code field shows; the card is not complete
    without it, and an empty or invalid one is reported with no request sent."""
    page = await browser.new_page()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))  # noqa: PLW0108 - Playwright sets an attribute on handlers; a bound builtin refuses it
    await page.goto(checkout.allowed + "/?postal=1")
    frame = await type_card(page, VISA.number, "1234", VISA.cvc)
    field = frame.get_by_label("Postal code", exact=True)
    assert await field.is_visible()
    assert await field.is_enabled()
    assert await field.get_attribute("id") == "postal_code"
    assert await field.get_attribute("autocomplete") == "postal-code"
    assert "postal_code-error" in str(await field.get_attribute("aria-describedby"))
    error = frame.locator("#postal_code-error")
    assert await error.get_attribute("aria-live") == "polite"
    # The card alone is not complete while the field is shown.
    changes = await page.evaluate("window.changes")
    assert changes
    assert changes[-1]["complete"] is False

    await page.click("#pay")
    await page.wait_for_function("window.failures.length === 1", timeout=10000)
    assert await field.get_attribute("aria-invalid") == "true"
    assert await error.text_content() == "Enter your postal code."

    for n, value in enumerate(["75001!", "123456789012", "SW1A 1AA-"], start=2):
        await field.fill("")
        await field.press_sequentially(value, delay=5)
        await page.click("#pay")
        await page.wait_for_function(f"window.failures.length === {n}", timeout=10000)
        assert await field.get_attribute("aria-invalid") == "true"
        assert await error.text_content()
    assert await page.evaluate("window.failures") == [
        {"type": "validation_error", "code": "incomplete_postal_code", "param": "postal_code"},
        *[{"type": "validation_error", "code": "invalid_postal_code", "param": "postal_code"}] * 3,
    ]
    await _nothing_sent(page, requests)

    await field.fill("")
    await field.press_sequentially("75001", delay=5)
    assert await field.get_attribute("aria-invalid") == "false"
    assert await error.text_content() == ""
    assert (await page.evaluate("window.changes"))[-1]["complete"] is True
    await page.close()


async def test_postal_code_field_reaches_the_partner_only(
    *,
    browser: Any,
    checkout: CheckoutSite,
    proxy: RunningProxy,
    localstripe: Localstripe,
    log_stream: io.StringIO,
    artifacts: Path,
) -> None:
    """A postal code typed in the frame goes in the POST body to the partner's billing
    address, is cleared with the card, and is kept in neither the vault nor the logs."""
    start = len(log_stream.getvalue())
    page = await browser.new_page()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))  # noqa: PLW0108 - Playwright sets an attribute on handlers; a bound builtin refuses it
    await page.goto(checkout.allowed + "/?postal=1")
    frame = await type_card(page, VISA.number, "1234", VISA.cvc)
    # Spaces around the code are dropped; the partner gets the code itself.
    await frame.locator("#postal_code").press_sequentially(" EH99 1SP ", delay=5)
    await page.screenshot(path=str(artifacts / "checkout-postal-code.png"), full_page=True)
    await page.click("#pay")
    await page.wait_for_function("window.received.length === 1", timeout=15000)
    assert await frame.locator("#postal_code").input_value() == ""
    posts = _posted_cards(requests)
    assert len(posts) == 1
    assert posts[0].post_data_json["postal_code"] == "EH99 1SP"
    received = await page.evaluate("window.received")
    assert "EH99" not in json.dumps([received, await page.evaluate("window.messages")])
    await _postal_code_kept_nowhere(
        proxy, localstripe, received[0]["token"], "EH99 1SP", log_stream.getvalue()[start:]
    )
    await page.close()


async def test_submit_postal_code_without_the_field_reaches_the_partner(
    *,
    browser: Any,
    checkout: CheckoutSite,
    proxy: RunningProxy,
    localstripe: Localstripe,
    log_stream: io.StringIO,
) -> None:
    """Without the field, submit({postalCode}) sends the page's postal code with the card;
    without one the body has no postal_code at all."""
    start = len(log_stream.getvalue())
    page = await browser.new_page()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))  # noqa: PLW0108 - Playwright sets an attribute on handlers; a bound builtin refuses it
    await page.goto(checkout.allowed + "/")
    frame = await type_card(page, VISA.number, "1234", VISA.cvc)
    assert await frame.locator("#postal_code").is_hidden()
    await page.evaluate("card.submit({postalCode: 'K1A 0B9'}).catch(function () {})")
    await page.wait_for_function("window.received.length === 1", timeout=15000)
    posts = _posted_cards(requests)
    assert len(posts) == 1
    assert posts[0].post_data_json["postal_code"] == "K1A 0B9"
    token = (await page.evaluate("window.received"))[0]["token"]
    await _postal_code_kept_nowhere(
        proxy, localstripe, token, "K1A 0B9", log_stream.getvalue()[start:]
    )

    await type_card(page, VISA.number, "1234", VISA.cvc)
    await page.click("#pay")
    await page.wait_for_function("window.received.length === 2", timeout=15000)
    posts = _posted_cards(requests)
    assert len(posts) == 2
    assert "postal_code" not in posts[1].post_data_json
    await page.close()


async def test_invalid_or_conflicting_submit_postal_code_sends_nothing(
    browser: Any, checkout: CheckoutSite, proxy: RunningProxy
) -> None:
    """An invalid submit({postalCode}) is a validation_error naming postal_code, and one
    passed while the frame shows its own field is postal_code_conflict; no request either way."""
    page = await browser.new_page()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))  # noqa: PLW0108 - Playwright sets an attribute on handlers; a bound builtin refuses it
    await page.goto(checkout.allowed + "/")
    await type_card(page, VISA.number, "1234", VISA.cvc)
    invalid: list[object] = ["", "   ", "75001!", "-75001", "123456789012", VISA.number, 75001]
    for n, value in enumerate(invalid, start=1):
        await page.evaluate("v => card.submit({postalCode: v}).catch(function () {})", value)
        await page.wait_for_function(f"window.failures.length === {n}", timeout=10000)
    assert await page.evaluate("window.failures") == [
        {"type": "validation_error", "code": "invalid_postal_code", "param": "postal_code"}
    ] * len(invalid)

    await page.goto(checkout.allowed + "/?postal=1")
    frame = await type_card(page, VISA.number, "1234", VISA.cvc)
    await frame.locator("#postal_code").press_sequentially("75001", delay=5)
    await page.evaluate("card.submit({postalCode: '75001'}).catch(function () {})")
    await page.wait_for_function("window.failures.length === 1", timeout=10000)
    assert await page.evaluate("window.failures") == [
        {"type": "validation_error", "code": "postal_code_conflict", "param": "postal_code"}
    ]
    await _nothing_sent(page, requests)
    await page.close()


async def test_server_postal_code_error_shows_on_the_field(
    browser: Any, checkout: CheckoutSite, proxy: RunningProxy
) -> None:
    """A 422 naming postal_code marks the shown field invalid and reaches onError."""
    page = await browser.new_page()
    await _answer_cards_with(
        page,
        422,
        kind="card_error",
        code="invalid_postal_code",
        message="postal_code must be 1 to 12 letters, digits, spaces or dashes.",
        param="postal_code",
    )
    await page.goto(checkout.allowed + "/?postal=1")
    frame = await type_card(page, VISA.number, "1234", VISA.cvc)
    field = frame.locator("#postal_code")
    await field.press_sequentially("75001", delay=5)
    await page.click("#pay")
    await page.wait_for_function("window.failures.length === 1", timeout=10000)
    assert await page.evaluate("window.failures") == [
        {"type": "card_error", "code": "invalid_postal_code", "param": "postal_code"}
    ]
    assert await field.get_attribute("aria-invalid") == "true"
    assert await frame.locator("#postal_code-error").text_content() == (
        "Your postal code is invalid."
    )
    await page.close()


# A refusal the frame's own checks let through (a partner's decline, a rule only the proxy
# or Stripe knows), the field it lands on, and what the shopper reads there.
_REFUSALS_ON_FIELDS = [
    (422, "card_error", "invalid_number", "number", "number", "Your card number is invalid."),
    (402, "card_error", "incorrect_number", None, "number", "Your card number is invalid."),
    (402, "card_error", "incorrect_cvc", None, "cvc", "Your card's security code is incorrect."),
    (402, "card_error", "expired_card", None, "expiry", "Your card has expired."),
    (422, "card_error", "invalid_expiry_year", "exp_year", "expiry",
     "Your card's expiry date is invalid."),
    (402, "card_error", "card_declined", None, None, None),
]  # fmt: skip


async def test_proxy_refusals_show_on_the_field_they_are_about(
    browser: Any, checkout: CheckoutSite, proxy: RunningProxy
) -> None:
    """A refusal naming a field (by param, or a decline by its code) marks that field
    invalid with a message for the shopper; a plain decline marks none."""
    for status, kind, code, param, field, message in _REFUSALS_ON_FIELDS:
        page = await browser.new_page()
        await _answer_cards_with(
            page, status, kind=kind, code=code, message=f"proxy message for {code}", param=param
        )
        await page.goto(checkout.allowed + "/")
        frame = await type_card(page, VISA.number, "1234", VISA.cvc)
        await page.click("#pay")
        await page.wait_for_function("window.failures.length === 1", timeout=10000)
        assert await page.evaluate("window.failures") == [
            {"type": kind, "code": code, "param": param}
        ]
        invalid = {
            name: await frame.locator(f"#{name}").get_attribute("aria-invalid")
            for name in ("number", "expiry", "cvc")
        }
        assert invalid == {name: str(name == field).lower() for name in invalid}, code
        if field is not None:
            assert await frame.locator(f"#{field}-error").text_content() == message
        assert await frame.locator("#form-status").text_content() == f"proxy message for {code}"
        await page.close()


async def test_frame_postal_code_rule_matches_server_rule(
    browser: Any, proxy: RunningProxy
) -> None:
    """The frame accepts exactly the postal codes proxy/domain/requests.py accepts."""
    rng = random.Random(12)
    values = [
        "75001", "SW1A 1AA", "10115", "12345-6789", "K1A 0B9", "1193653471", "A",
        "-75001", "75001-", "7500 1", "12345678901", "123456789012", "ABCDEFGHIJKLM",
        "75001!", "7\uff15001", "\u0667\u0665\u0660\u0660\u0661", "75_001", "SW1A  1AA",
        "1234567890A",
    ]  # fmt: skip
    alphabet = "0123456789AZaz -_.!é"
    for _ in range(300):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        if value == value.strip():
            values.append(value)

    def server_refusal(value: str) -> str | None:
        try:
            parse_card_request(card_body(postal_code=value), today=date(2026, 1, 1))
        except ValidationFailed as refused:
            return refused.code
        return None

    page = await browser.new_page()
    await page.goto(proxy.base + "/elements/card")
    got = await page.evaluate(
        "vs => vs.map(v => (TokenProxyCardRules.checkPostalCode(v, true) || {}).code || null)",
        values,
    )
    assert got == [server_refusal(v) for v in values]
    assert None in got
    assert "invalid_postal_code" in got
    # Not framed with postalCode: true, the field stays hidden.
    assert await page.locator("#postal_code").is_hidden()
    await page.close()
