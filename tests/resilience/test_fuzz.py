"""Schemathesis fuzzing of the running server against its own /openapi.json.

Positive and negative cases for every operation, with every response check that
applies to a stateless API, plus one of ours: an error body never contains a value
the request sent. ``make fuzz`` runs more cases (TOKENPROXY_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks
from tokenproxy_sandbox.launcher import Localstripe

from proxy.web.routes import ROUTES
from tests.resilience.serverproc import ServerProcess

# About 1,200 cases: enough to sweep every operation and mode inside a suite that stays
# well under ten minutes; `make fuzz` runs 20,000.
EXAMPLES = int(os.environ.get("TOKENPROXY_FUZZ_EXAMPLES", "600"))
CASES: list[str] = []


class EchoedInput(AssertionError):
    """An error body repeated a value from the request."""


def _values(data: Any) -> Iterator[str]:
    """Every string or number value inside request data (not object keys: those are names)."""
    if isinstance(data, dict):
        for value in data.values():
            yield from _values(value)
    elif isinstance(data, list):
        for value in data:
            yield from _values(value)
    elif isinstance(data, str | int | float) and not isinstance(data, bool):
        yield str(data)


@schemathesis.check
def error_bodies_do_not_echo_input(ctx: Any, response: Any, case: Any) -> None:
    """No error response contains a submitted value of six characters or more."""
    CASES.append(case.operation.label)
    if response.status_code < 400:
        return
    text = response.content.decode("utf-8", "replace")
    sent = list(_values(case.body)) if case.body is not None else []
    sent += [str(v) for v in (case.path_parameters or {}).values()]
    sent += [str(v) for k, v in (case.headers or {}).items() if k.lower() != "authorization"]
    for value in sent:
        # Plain words ("number" sent as an expiry month) legitimately appear in our own
        # messages; anything with a digit or symbol (card data, keys) must never come back.
        distinctive = not re.fullmatch(r"[A-Za-z_. ]*", value)
        if len(value) >= 6 and distinctive and value in text:
            raise EchoedInput(f"error body echoes a submitted value ({len(value)} chars)")


@pytest.fixture(scope="module")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory, localstripe: Localstripe
) -> Iterator[ServerProcess]:
    """A real `python -m proxy serve` process for the fuzzer (partner: localstripe)."""
    # One fuzzing source sends thousands of deliberately unauthenticated requests (the
    # ignored_auth check): with the default throttle it would soon see only 429s.
    server = ServerProcess(
        tmp_path_factory.mktemp("fuzz"),
        localstripe.base_url,
        TOKENPROXY_AUTH_FAILURE_LIMIT="1000000",
    )
    asyncio.run(server.start())
    yield server
    server.terminate()
    asyncio.run(server.wait())


@schemathesis.check
def negative_data_rejected(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis' negative_data_rejection, also counting 413 and 408 as rejections.

    Its default list of rejecting statuses lacks 413: a schema-violating body that is
    also too large is rejected by size before it is parsed, which is still a rejection.
    """
    if response.status_code in {408, 413}:
        return None
    return checks.negative_data_rejection(ctx, response, case)  # type: ignore[no-any-return]


CHECKS = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    negative_data_rejected,
    checks.ignored_auth,
    checks.missing_required_header,
    checks.unsupported_method,
    error_bodies_do_not_echo_input,
]


def _operations(server: ServerProcess) -> list[Any]:
    schema = schemathesis.openapi.from_url(server.base + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_api(fuzz_server: ServerProcess, mode: GenerationMode) -> None:
    """No 5xx, responses match the document, invalid input is rejected, nothing is echoed.

    Driven through schemathesis' Python API (its pytest plugin does not load under
    pytest 9): one hypothesis run per operation and generation mode.
    """
    for operation in _operations(fuzz_server):
        _fuzz_operation(fuzz_server, operation, mode)


def _fuzz_operation(server: ServerProcess, operation: Any, mode: GenerationMode) -> None:
    # A client holding every scope, so no operation is fuzzed only as far as its 403.
    auth = server.auth("root")

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES // 2,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        # A query parameter whose value is None or [] is dropped by the HTTP client, so the
        # "negative" request that reaches the server is a valid one: not a real case.
        assume(all(value is not None and value != [] for value in (case.query or {}).values()))
        # The key goes into the case as well as onto the wire: a case made negative only by
        # a missing Authorization header is valid once it has one, and the negative check
        # judges the case's own headers; passed explicitly too, so the auth check knows
        # the key is the caller's, not a generated one.
        case.headers = {**(case.headers or {}), **auth}
        case.call_and_validate(base_url=server.base, headers=auth, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        # An operation without parameters or body has no negative variant.
        assert mode is GenerationMode.NEGATIVE


def test_fuzz_ran_enough_cases_without_crashes(fuzz_server: ServerProcess) -> None:
    """The fuzz run covered ≥ 1,000 cases and the server logged no unhandled exception."""
    if not CASES:
        pytest.skip("the fuzz test did not run in this session")
    assert len(CASES) >= 1000 or EXAMPLES < 600
    log = Path(fuzz_server.log).read_text()
    assert "unhandled_error" not in log
    assert "Traceback" not in log
    events = [json.loads(line).get("event") for line in log.splitlines() if line.startswith("{")]
    assert "request" in events


def test_document_matches_the_route_table() -> None:
    """Every served route is documented with its method, and every documented one is served.

    OPTIONS operations are CORS preflights answered by middleware, not by the route table.
    """
    from proxy.web.openapi import DOCUMENT

    served = {
        (r.method.lower(), re.sub(r"\{(\w+):[^}]*\}", r"{\1}", r.path))  # type: ignore[attr-defined]
        for r in ROUTES
    }
    documented = {
        (method, path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method != "options"
    }
    assert served == documented
