"""The OpenAPI document and the route table describe the same API."""

from __future__ import annotations

import json
import re

from aiohttp import web

from proxy.web.openapi import DOCUMENT
from proxy.web.routes import ROUTES
from tests.ibans import VALID


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    """Each (method, path) of ROUTES is in the document's paths, and nothing else is."""
    routed = {
        # aiohttp spells a constrained variable {name:regex}; OpenAPI spells it {name}.
        (route.method.lower(), re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.path))
        for route in ROUTES
        if isinstance(route, web.RouteDef)
    }
    documented = {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}
    # CORS preflights are answered by middleware for routed paths, not by route entries.
    preflights = {(m, p) for m, p in documented if m == "options"}
    assert {p for _, p in preflights} <= {p for _, p in routed}
    assert routed == documented - preflights


def test_document_holds_no_account_numbers() -> None:
    """The served document carries no test IBAN or card number."""
    text = json.dumps(DOCUMENT)
    assert not any(case.iban in text for case in VALID)
    assert "4242424242424242" not in text
