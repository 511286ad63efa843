"""The non-leakage proof for bank data: after real traffic, no byte we wrote holds an IBAN.

Tokenizes every test IBAN (with and without a customer), reads, lists and exports them,
provokes each error the bank path has, erases one customer, then scans the SQLite
files (with -wal/-shm), every log line of the session so far, /metrics and every HTTP
response body for each IBAN (compact, lower case, printed in blocks), its BBAN, and the
account characters the stored fields must keep hidden.
"""

from __future__ import annotations

import re

from tests.conftest import RunningProxy
from tests.core.test_invoices import invoice_body
from tests.helpers import bank_body, create
from tests.ibans import LEAK, VALID, IbanCase
from tests.proxy.test_cards_api import card_body


def iban_patterns(case: IbanCase) -> list[re.Pattern[bytes]]:
    """Byte patterns that would betray ``case``."""
    patterns = [
        re.compile(re.escape(case.iban.encode()), re.IGNORECASE),
        re.compile(re.escape(case.printed.encode()), re.IGNORECASE),
        re.compile(re.escape(case.iban[4:].encode()), re.IGNORECASE),
    ]
    if case in LEAK:
        # The hidden account characters alone, outside longer digit runs and fractions.
        patterns.append(re.compile(rb"(?<![\d.])" + case.hidden.encode() + rb"(?![\d])"))
    return patterns


def scan(label: str, data: bytes) -> list[str]:
    """Every hit of any IBAN pattern in ``data``, described."""
    hits = []
    for case in VALID + LEAK:
        for pattern in iban_patterns(case):
            for match in pattern.finditer(data):
                start = max(match.start() - 20, 0)
                hits.append(f"{label}: {pattern.pattern!r} near {data[start : match.end() + 20]!r}")
    return hits


async def test_no_iban_in_anything_written(proxy: RunningProxy, log_stream: object) -> None:
    """Zero hits for every IBAN, BBAN and hidden account run across DB files, logs,
    metrics and bodies."""
    seen_lines = log_stream.getvalue().count('"event":"request"')  # type: ignore[attr-defined]
    tokens = []
    for i, case in enumerate(VALID + LEAK):
        customer = f"cus-iban-{i % 3}" if i % 2 else None
        for iban in (case.iban, case.printed, case.iban.lower()):
            created = await create(
                proxy, "/v1/bank-accounts", bank_body(case, iban=iban, customer_ref=customer)
            )
            tokens.append(created["token"])
    for token in tokens:
        for client in ("orders", "billing"):
            status, _, _ = await proxy.request("GET", f"/v1/tokens/{token}", client=client)
            assert status == 200
    for i in range(3):
        status, _, _ = await proxy.request(
            "GET", f"/v1/customers/cus-iban-{i}/tokens", client="orders"
        )
        assert status == 200
        status, _, _ = await proxy.request(
            "GET", f"/v1/customers/cus-iban-{i}/export", client="ops"
        )
        assert status == 200

    case = LEAK[0]
    broken = case.iban[:-1] + str((int(case.iban[-1]) + 1) % 10)
    bank_errors: list[dict[str, object]] = [
        {"json": bank_body(case, iban=broken)},
        {"json": bank_body(case, iban=case.iban + "0")},
        {"json": bank_body(case, holder_name=case.iban)},
        {"json": bank_body(case, holder_name=f"Acct {case.printed}")},
        {"json": bank_body(case, email=f"{case.iban}@example.se")},
        {"json": bank_body(case, customer_ref=case.iban)},
        {"json": {**bank_body(case), case.iban: "x"}},
        {"json": {**bank_body(case), "iban": int(case.iban[4:])}},
        {
            "data": f'{{"iban": "{case.iban}", "holder_name": '.encode(),
            "headers": {"Content-Type": "application/json"},
        },
        {
            "data": f"iban={case.iban}".encode(),
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
        },
    ]
    for kwargs in bank_errors:
        status, _, _ = await proxy.request("POST", "/v1/bank-accounts", client="checkout", **kwargs)
        assert 400 <= status < 500
    status, _, _ = await proxy.request(
        "POST", "/v1/bank-accounts", client="orders", json=bank_body(case)
    )
    assert status == 403
    # IBANs where other data belongs.
    for path, body, client in [
        ("/v1/cards", card_body(metadata={"note": case.iban}), "checkout"),
        ("/v1/cards", card_body(customer_ref=case.iban), "checkout"),
        ("/v1/invoices", invoice_body(invoice_number=case.iban), "invoicer"),
        ("/v1/invoices", invoice_body(partner="stripe", partner_reference=case.iban), "invoicer"),
    ]:
        status, _, _ = await proxy.request("POST", path, client=client, json=body)
        assert status == 422
    for path in (f"/v1/tokens/{case.iban}", f"/v1/customers/{case.iban}/tokens"):
        status, _, _ = await proxy.request("GET", path, client="orders")
        assert status in {404, 422}
    status, _, _ = await proxy.request("DELETE", "/v1/customers/cus-iban-1", client="eraser")
    assert status == 200

    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        metrics = await resp.read()
    hits: list[str] = []
    db_files = sorted(proxy.vault_path.parent.glob(proxy.vault_path.name + "*"))
    for path in db_files:
        hits += scan(path.name, path.read_bytes())
    assert log_stream.getvalue().count('"event":"request"') > seen_lines  # type: ignore[attr-defined]
    hits += scan("logs", log_stream.getvalue().encode())  # type: ignore[attr-defined]
    hits += scan("metrics", metrics)
    for i, body in enumerate(proxy.responses):
        hits += scan(f"response {i}", body)
    assert hits == []
    # The scan is real: it finds an IBAN, printed or hidden part, when one is there.
    assert scan("probe", f"x {VALID[2].printed} y".encode())
    assert scan("probe", f'"note": "{LEAK[1].hidden}"'.encode())
