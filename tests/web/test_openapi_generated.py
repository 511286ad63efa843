"""The generated document holds every route, parameter and error code of the code, and no other."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from proxy.domain.errors import ERROR_CODES
from proxy.domain.schemas import (
    BankAccountRequestBody,
    CardConfirmRequestBody,
    CardRequestBody,
    InvoiceRequestBody,
)
from proxy.partners.stripe import _CARD_CODES
from proxy.web.api import OPERATIONS, QUERY_PARAMETERS
from proxy.web.openapi import DOCUMENT
from proxy.web.routes import ROUTES
from tests.cards import VISA
from tests.ibans import VALID

PROXY = Path(__file__).resolve().parents[2] / "proxy"
# Names a `code=` keyword may pass along without being a code of its own.
_PASSED_ON = {"code", "exc.code"}


def _code_literals(expr: ast.expr, where: str) -> Iterator[str]:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        yield expr.value
    elif isinstance(expr, ast.BoolOp):  # code or "card_declined"
        for value in expr.values:
            yield from _code_literals(value, where)
    elif ast.unparse(expr) not in _PASSED_ON:
        # A code built at run time cannot be listed: write it out where it is raised.
        pytest.fail(f"{where}: error code {ast.unparse(expr)} is not a literal")


def raised_codes() -> set[str]:
    """Every error code written in proxy/: code= keywords, default_code, Stripe's pass-through."""
    codes: set[str] = set(_CARD_CODES)
    for path in PROXY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(PROXY.parent)}:{getattr(node, 'lineno', 0)}"
            if _names_a_code(node):
                assert isinstance(node, ast.keyword | ast.Assign | ast.AnnAssign)
                assert node.value is not None
                codes |= set(_code_literals(node.value, where))
    return codes


def _names_a_code(node: ast.AST) -> bool:
    """A ``code=`` keyword, or a ``default_code`` class attribute."""
    if isinstance(node, ast.keyword):
        return node.arg == "code"
    targets = node.targets if isinstance(node, ast.Assign) else []
    if isinstance(node, ast.AnnAssign):
        targets = [node.target]
    return any(isinstance(t, ast.Name) and t.id == "default_code" for t in targets)


def documented_codes() -> set[str]:
    """The codes the document's error schema lists."""
    schemas = DOCUMENT["components"]["schemas"]
    return set(schemas["ErrorDetail"]["properties"]["code"]["enum"])


def _template(path: str) -> str:
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_every_raised_error_code_is_documented_and_no_other() -> None:
    """The codes raised anywhere in proxy/ are exactly ERROR_CODES and the document's list."""
    assert raised_codes() == set(ERROR_CODES)
    assert documented_codes() == set(ERROR_CODES)


def test_every_route_is_documented_and_no_other() -> None:
    """Each routed (method, path) is an operation of the document; the rest are preflights."""
    routed = {(r.method.lower(), _template(r.path)) for r in ROUTES if isinstance(r, web.RouteDef)}
    documented = {(method, path) for method, path, _ in _operations()}
    assert routed == {pair for pair in documented if pair[0] != "options"}
    assert len(ROUTES) == len(routed)


def test_path_parameters_are_the_route_variables() -> None:
    """Each operation documents exactly the variables of its path, each required."""
    for _, path, operation in _operations():
        declared = [p for p in operation.get("parameters", []) if p["in"] == "path"]
        assert {p["name"] for p in declared} == set(re.findall(r"\{(\w+)\}", path)), path
        assert all(p["required"] for p in declared)


def test_query_parameters_are_the_ones_the_server_takes() -> None:
    """Each route's documented query parameters are the ones the middleware lets through."""
    for method, path, operation in _operations():
        documented = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        if method != "options":
            assert documented == QUERY_PARAMETERS.get(path, frozenset()), path
    assert set(QUERY_PARAMETERS) <= {path for _, path, _ in _operations()}


def test_handlers_read_only_declared_query_parameters() -> None:
    """Every request.query name a handler reads is a declared query parameter."""
    read: set[str] = set()
    for path in (PROXY / "web" / "handlers").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and ast.unparse(node.func.value) == "request.query"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                read.add(node.args[0].value)
    assert read
    assert read == set().union(*QUERY_PARAMETERS.values())


def test_every_component_is_used_and_every_reference_resolves() -> None:
    """No schema is listed that no operation reaches, and no reference dangles."""
    schemas = DOCUMENT["components"]["schemas"]
    text = msgspec.json.encode(DOCUMENT).decode()
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', text))
    assert refs == set(schemas)


def test_operations_are_unique_and_named() -> None:
    """Route names and operation ids are unique, so the table and the document line up."""
    assert len({op.name for op in OPERATIONS}) == len(OPERATIONS)
    assert len({op.operation_id for op in OPERATIONS}) == len(OPERATIONS)


def test_security_and_idempotency_as_before() -> None:
    """Bearer security by default; public pages opt out; creating POSTs take an Idempotency-Key."""
    assert DOCUMENT["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer"}
    }
    assert DOCUMENT["security"] == [{"bearer": []}]
    for method, path, operation in _operations():
        # The webhook endpoint is authenticated by its Stripe-Signature, and deduplicated
        # by the event id rather than an Idempotency-Key.
        webhook = path == "/v1/partners/stripe/events"
        public = path in {"/openapi.json", "/elements/card", "/elements/{asset}"} or webhook
        assert (operation.get("security") == []) == (public or method == "options"), path
        headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
        assert (headers == {"Idempotency-Key"}) == (method == "post" and not webhook), path


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (
            CardRequestBody,
            {
                "number": VISA.number,
                "exp_month": "12",
                "exp_year": 2030,
                "cvc": VISA.cvc,
                "holder_name": "Ada",
                "customer_ref": "cus_1@shop",
                "metadata": {"order_id": "A-1"},
                "return_url": "https://shop.example/back",
            },
        ),
        (
            BankAccountRequestBody,
            {
                "iban": VALID[0].iban,
                "holder_name": "Ada",
                "email": "ada@example.com",
                "customer_ref": "cus_1",
                "mandate_acceptance": {"ip_address": "192.0.2.1", "user_agent": "Mozilla/5.0"},
            },
        ),
        (
            InvoiceRequestBody,
            {
                "customer_ref": "cus_1",
                "invoice_number": "INV-1",
                "ocr_reference": "1234567897",
                "amount": 100,
                "currency": "SEK",
                "due_date": "2030-01-31",
            },
        ),
        (CardConfirmRequestBody, {"setup": "opaque"}),
    ],
)
def test_valid_bodies_fit_their_schema(model: type[msgspec.Struct], body: dict[str, Any]) -> None:
    """A body the rules accept passes the schema too (the document is never the stricter)."""
    msgspec.convert(body, model)
