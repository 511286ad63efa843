"""The demo checkout `make run` serves, in a real browser: type a card, get a token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.browser.test_card_fields import type_card
from tests.cards import VISA
from tests.devserver import running_dev


async def test_demo_checkout_tokenizes_through_the_hosted_fields(
    browser: Any, tmp_path: Path, artifacts: Path
) -> None:
    """The demo page mounts the card frame, shows the token, and billing resolves it to pm_."""
    with running_dev(tmp_path) as dev:
        page = await browser.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        posts: list[Any] = []
        page.on(
            "request",
            lambda r: posts.append(r) if r.method == "POST" else None,
        )
        await page.goto(dev.demo + "/")
        frame = await type_card(page, VISA.number, "1234", VISA.cvc)
        assert await frame.locator("#brand").text_content() == "visa"
        await page.click("#pay")
        await page.wait_for_selector("#result:not([hidden])", timeout=15000)
        await page.screenshot(path=str(artifacts / "demo-checkout.png"), full_page=True)

        token = await page.text_content("#token")
        assert token is not None
        assert token.startswith("vtok_card_")
        assert await page.text_content("#last4") == VISA.number[-4:]
        assert token in (await page.text_content("#resolve") or "")
        assert not [m for m in console if "Content Security Policy" in m]

        # The card went from the frame, on the proxy's origin, with the demo's pk_ key.
        cards = [r for r in posts if r.url == dev.api + "/v1/cards"]
        assert len(cards) == 1
        headers = await cards[0].all_headers()
        assert headers["authorization"] == f"Bearer {dev.key('demo-checkout.key')}"
        assert headers["tokenproxy-checkout-origin"] == dev.demo

        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{dev.api}/v1/tokens/{token}",
                headers={"Authorization": f"Bearer {dev.key('dev-client.key')}"},
            ) as resp,
        ):
            resolved = await resp.json()
        assert resolved["partner_reference"].startswith("pm_")
        assert resolved["last4"] == VISA.number[-4:]
        await page.close()
