"""The hosted card fields' page and scripts as served: CSP, frame-ancestors, no inline script."""

from __future__ import annotations

import html
import json
import re

import pytest

from proxy.domain.card import brand_rules
from proxy.web.handlers.elements import content_security_policy, render_card_page
from tests.conftest import RunningProxy

SHOP = "https://shop.example"


@pytest.fixture
def proxy_env() -> dict[str, str]:
    """Two allowed checkout origins."""
    return {"TOKENPROXY_CORS_ORIGINS": f"{SHOP},http://127.0.0.1:3000"}


async def test_card_page_has_strict_csp(proxy: RunningProxy) -> None:
    """The page allows only its own script/style/fetches and only allowed origins may frame it."""
    status, _, resp = await proxy.request("GET", "/elements/card")
    assert status == 200
    assert resp.content_type == "text/html"
    csp = {
        d.split()[0]: d.split()[1:]
        for d in resp.headers["Content-Security-Policy"].split(";")
        if d.strip()
    }
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == [SHOP, "http://127.0.0.1:3000"]
    assert csp["form-action"] == ["'none'"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "X-Frame-Options" not in resp.headers  # CSP frame-ancestors decides


def test_frame_ancestors_none_without_origins() -> None:
    """With no CORS origins configured nobody may frame the card page."""
    assert content_security_policy(()).endswith("frame-ancestors 'none'")


def test_card_page_has_no_inline_script_and_carries_rules() -> None:
    """Every script is an external file; config (origins, brand rules) is escaped data."""
    page = render_card_page((SHOP,))
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, flags=re.S)
    assert scripts
    assert all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert re.search(r"\son[a-z]+\s*=", page) is None  # no onclick= or other handlers
    match = re.search(r'data-config="([^"]*)"', page)
    assert match is not None
    config = json.loads(html.unescape(match.group(1)))
    assert config == {"origins": [SHOP], "rules": json.loads(json.dumps(brand_rules()))}


@pytest.mark.parametrize(
    ("path", "content_type", "corp"),
    [
        ("/elements/tokenproxy.js", "text/javascript", "cross-origin"),
        ("/elements/card.js", "text/javascript", "same-origin"),
        ("/elements/card.css", "text/css", "same-origin"),
    ],
)
async def test_assets_served(proxy: RunningProxy, path: str, content_type: str, corp: str) -> None:
    """The scripts and style sheet are served with their types, nosniff and CORP."""
    status, _, resp = await proxy.request("GET", path)
    assert status == 200
    assert resp.content_type == content_type
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cross-Origin-Resource-Policy"] == corp


@pytest.mark.parametrize(
    "path", ["/elements/card.html", "/elements/../proxy/app.py", "/elements/x.js", "/elements/"]
)
async def test_no_other_files_served(proxy: RunningProxy, path: str) -> None:
    """Only the named assets exist; nothing else under /elements is served."""
    status, _, _ = await proxy.request("GET", path)
    assert status == 404


def test_card_page_postal_code_field_is_hidden_until_asked_for() -> None:
    """The postal code field is labelled, autofillable and tied to its live error slot, and
    stays hidden and disabled until card.js shows it (mount option postalCode: true)."""
    page = render_card_page((SHOP,))
    block = re.search(r'<div id="postal_code-field"([^>]*)>(.*?)</div>', page, flags=re.S)
    assert block is not None
    assert re.search(r"\shidden\b", block.group(1))
    assert '<label for="postal_code">Postal code</label>' in block.group(2)
    field = re.search(r'<input id="postal_code"([^>]*)>', block.group(2))
    assert field is not None
    attrs = field.group(1)
    assert 'autocomplete="postal-code"' in attrs
    assert 'aria-describedby="postal_code-error"' in attrs
    assert 'aria-invalid="false"' in attrs
    assert re.search(r"\sdisabled\b", attrs)
    assert '<p id="postal_code-error" class="error" aria-live="polite"></p>' in block.group(2)
