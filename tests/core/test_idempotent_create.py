"""Idempotency-Key on the other creating POSTs: bank accounts and invoices."""

from __future__ import annotations

import json

import pytest

from tests.conftest import RunningProxy
from tests.core.test_invoices import invoice_body
from tests.helpers import bank_body, rows

ROUTES = [
    ("/v1/bank-accounts", "checkout", bank_body, "bank"),
    ("/v1/invoices", "invoicer", invoice_body, "invoice"),
]


async def post(
    proxy: RunningProxy, path: str, client: str, body: dict[str, object], key: str
) -> tuple[int, bytes, dict[str, str]]:
    """POST with an Idempotency-Key; returns status, raw body and headers."""
    headers = {**proxy.auth(client), "Idempotency-Key": key}
    async with proxy.http.post(proxy.base + path, json=body, headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


@pytest.mark.parametrize(("path", "client", "make_body", "kind"), ROUTES)
async def test_same_key_and_body_replays_the_first_answer(
    proxy: RunningProxy, path: str, client: str, make_body: object, kind: str
) -> None:
    """The second POST with the same key and body gets the same bytes, marked replayed, and
    the vault (and the partner, for bank accounts) holds one object."""
    body = make_body()  # type: ignore[operator]
    first = await post(proxy, path, client, body, f"create-{kind}-1")
    second = await post(proxy, path, client, body, f"create-{kind}-1")
    assert first[0] == second[0] == 201
    assert second[1] == first[1]
    assert second[2].get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first[2]
    token = json.loads(first[1])["token"]
    assert rows(proxy.vault_path, "SELECT count(*) FROM records WHERE kind = ?", kind) == [(1,)]
    assert rows(proxy.vault_path, "SELECT token FROM records WHERE kind = ?", kind) == [(token,)]


@pytest.mark.parametrize(("path", "client", "make_body", "kind"), ROUTES)
async def test_same_key_other_body_is_422(
    proxy: RunningProxy, path: str, client: str, make_body: object, kind: str
) -> None:
    """A key reused with another body is refused with 422 idempotency_key_reused."""
    body = make_body()  # type: ignore[operator]
    assert (await post(proxy, path, client, body, "reuse-1"))[0] == 201
    other = make_body(customer_ref="cus-other")  # type: ignore[operator]
    status, raw, _ = await post(proxy, path, client, other, "reuse-1")
    assert status == 422
    assert json.loads(raw)["error"]["code"] == "idempotency_key_reused"


async def test_invalid_body_is_refused_before_the_key_is_recorded(proxy: RunningProxy) -> None:
    """A validation error does not burn the key: the corrected body then succeeds with it."""
    bad = bank_body(iban="DE00370400440532013000")
    status, _, _ = await post(proxy, "/v1/bank-accounts", "checkout", bad, "fix-then-retry")
    assert status == 422
    status, _, _ = await post(proxy, "/v1/bank-accounts", "checkout", bank_body(), "fix-then-retry")
    assert status == 201
