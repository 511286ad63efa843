"""The hosted card fields in a real browser: token to the allowed page only, nothing else."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

from proxy.domain.card import detect_brand, luhn_valid
from tests.browser.conftest import CheckoutSite
from tests.cards import PARTNER_CARDS, VISA, luhn_complete
from tests.conftest import RunningProxy
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
    assert await page.evaluate("window.received") == []
    assert not [r for r in requests if "/v1/" in r.url]
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
    answer = {
        "error": {
            "type": "card_error",
            "code": "authentication_required",
            "message": "The card issuer requires the cardholder to authenticate.",
            "param": None,
            "request_id": "req_test",
            "setup": "sealed-setup",
            "next_action": {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "url": "https://hooks.example/3ds/seti_1",
                    "return_url": "https://shop.example/return",
                    "client_secret": "seti_1_secret_x",
                },
                "use_stripe_sdk": {"stripe_js": "https://js.example"},
            },
        }
    }

    async def answer_402(route: Any) -> None:
        await route.fulfill(
            status=402,
            content_type="application/json",
            body=json.dumps(answer),
            headers={"Access-Control-Allow-Origin": "*"},
        )

    await page.route("**/v1/cards", answer_402)
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
