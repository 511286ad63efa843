"""Browser fixtures: Debian's Chromium through Playwright, and a test checkout site.

The checkout site serves one page on loopback. Reached as http://127.0.0.1:PORT it
is an allowed origin; reached as http://localhost:PORT it is another origin (same
server, different host name), which the proxy does not allow. With ``?postal=1`` the
page mounts the fields with ``postalCode: true``.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from tokenproxy_sandbox.launcher import free_port

from tests.conftest import RunningProxy, add_shop_key, ci

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _unavailable(reason: str) -> None:
    # In CI the browser test is part of the proof: a missing browser fails it.
    if ci():
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


def _chromium_installed() -> bool:
    return CHROMIUM.exists()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium (/usr/bin/chromium) driven by Playwright; never downloads a browser."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install '.[dev]')")
    if not _chromium_installed():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)")
    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield instance
        await instance.close()


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots go (gitignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def checkout_port() -> int:
    """The test checkout site's port."""
    return free_port()


@pytest.fixture
def checkout_origin(checkout_port: int) -> str:
    """The allowed checkout origin."""
    return f"http://127.0.0.1:{checkout_port}"


@pytest.fixture
def proxy_env(checkout_origin: str) -> dict[str, str]:
    """The proxy allows the checkout origin (and so frames it and answers its preflights)."""
    return {"TOKENPROXY_CORS_ORIGINS": checkout_origin}


@pytest.fixture
def client_keys(
    client_keys: dict[str, str], tmp_path: Path, checkout_origin: str
) -> dict[str, str]:
    """The standard clients plus the shop's publishable key bound to the checkout origin."""
    return add_shop_key(client_keys, tmp_path, origin=checkout_origin)


CHECKOUT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test checkout</title>
<style>body {{ font-family: sans-serif; max-width: 28rem; margin: 2rem auto; }}</style>
</head><body>
<h1>Checkout</h1>
<div id="card"></div>
<button id="pay" type="button">Pay</button>
<pre id="result"></pre>
<script src="{proxy}/elements/tokenproxy.js"></script>
<script>
  window.received = [];
  window.errors = [];
  window.actions = [];
  window.failures = [];
  window.changes = [];
  window.messages = [];
  window.addEventListener("message", function (e) {{
    window.messages.push({{ origin: e.origin, data: JSON.stringify(e.data) }});
  }});
  var query = new URLSearchParams(location.search);
  var card = TokenProxy.mount("#card", {{
    publishableKey: "{key}",
    postalCode: query.get("postal") === "1" ? true : undefined,
    onChange: function (c) {{ window.changes.push(c); }},
    onToken: function (r) {{
      window.received.push(r);
      document.getElementById("result").textContent = "token " + r.token;
    }},
    onError: function (e) {{
      window.errors.push({{ type: e.type, code: e.code }});
      window.failures.push({{ type: e.type, code: e.code, param: e.param }});
      if (e.nextAction) window.actions.push({{ nextAction: e.nextAction, setup: e.setup }});
      document.getElementById("result").textContent = "error " + e.code;
    }}
  }});
  document.getElementById("pay").addEventListener("click", function () {{
    card.submit().catch(function () {{}});
  }});
</script>
</body></html>
"""


@dataclass
class CheckoutSite:
    """The test shop, reachable on an allowed and on a not-allowed origin."""

    allowed: str
    other: str


@pytest.fixture
async def checkout(proxy: RunningProxy, checkout_port: int) -> AsyncIterator[CheckoutSite]:
    """Serve the checkout page embedding the proxy's card fields."""
    page = CHECKOUT_PAGE.format(proxy=html.escape(proxy.base), key=html.escape(proxy.keys["shop"]))

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", checkout_port).start()
    yield CheckoutSite(
        allowed=f"http://127.0.0.1:{checkout_port}", other=f"http://localhost:{checkout_port}"
    )
    await runner.cleanup()
