"""The idempotent create flow stores whatever final answer a use case ends in, wherever in
the flow it arises, and only final ones: checked on the flow itself, on both backends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.idempotent import REPLAYED_HEADER, Answer, create_once
from proxy.core.services import Services
from proxy.core.views import created_view
from proxy.domain.errors import (
    Conflict,
    IdempotencyKeyErased,
    InvalidRequest,
    PartnerDeclined,
    PartnerError,
    PartnerTimeout,
    PartnerUnavailable,
    ProxyError,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
    ValidationFailed,
)
from tests.backends import RawRows
from vault import Kind, NewRecord, Record

INVOICE = NewRecord(
    kind=Kind.INVOICE, partner=None, partner_reference=None, customer_ref="cus-flow"
)

FINAL = [
    PartnerDeclined("declined", code="card_declined", decline_code="insufficient_funds"),
    ValidationFailed("refused after the partner answered", code="invalid_value", param="x"),
    InvalidRequest("bad", headers={"X-Extra": "kept"}),
]
TRANSIENT = [
    PartnerUnavailable("down", headers={"Retry-After": "1"}),
    PartnerTimeout("slow"),
    PartnerError("failed", code="partner_rejected_request"),
    ServiceUnavailable("vault down", code="vault_unavailable"),
    Conflict("busy"),
    RateLimited("slow down"),
    RequestTimeout("late"),
]


class Flow:
    """One creating request whose partner or store step fails with ``error`` on its first run."""

    def __init__(self, services: Services, error: ProxyError, *, at: str) -> None:
        self.services = services
        self.error = error
        self.at = at
        self.partner_calls = 0
        self.store_calls = 0

    async def partner_step(self, _key: str, _token: str) -> dict[str, Any]:
        """The partner call: fails once when the error is placed here."""
        self.partner_calls += 1
        if self.at == "partner" and self.partner_calls == 1:
            raise self.error
        return {"reference": None}

    async def store_step(self, _: dict[str, Any], token: str) -> Record:
        """The vault write (an attach would happen here): fails once when placed here."""
        self.store_calls += 1
        if self.at == "store" and self.store_calls == 1:
            raise self.error
        return await self.services.vault.put(INVOICE, token=token)

    async def run(self, request_id: str) -> Answer:
        """The request, sent with the same key and body each time."""
        return await create_once(
            self.services,
            client="checkout",
            key="k-1",
            raw=b'{"same": "body"}',
            request_id=request_id,
            customer_ref="cus-flow",
            kind=Kind.INVOICE,
            partner_step=self.partner_step,
            store_step=self.store_step,
            respond=created_view,
        )


@pytest.mark.parametrize("at", ["partner", "store"])
@pytest.mark.parametrize("error", FINAL, ids=lambda e: f"{e.status}-{e.code}")
async def test_final_errors_are_stored_and_replayed(
    services: Services, error: ProxyError, at: str
) -> None:
    """A final client error from either step is the key's answer: the retry replays its
    status, bytes and headers, marked replayed, without running either step again."""
    flow = Flow(services, error, at=at)
    with pytest.raises(type(error)) as raised:
        await flow.run("req_first")
    assert raised.value is error
    replay = await flow.run("req_second")
    assert replay.status == error.status
    assert replay.body == error.rendered("req_first")
    assert json.loads(replay.body)["error"]["request_id"] == "req_first"
    assert replay.headers == {**error.headers, REPLAYED_HEADER: "true"}
    assert (flow.partner_calls, flow.store_calls) == (1, 1 if at == "store" else 0)


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: f"{e.status}-{e.code}")
async def test_transient_errors_are_not_stored(services: Services, error: ProxyError) -> None:
    """A failure a retry can change releases the key: the retry runs and completes."""
    flow = Flow(services, error, at="store")
    with pytest.raises(type(error)):
        await flow.run("req_first")
    answer = await flow.run("req_second")
    assert answer.status == 201
    assert REPLAYED_HEADER not in answer.headers
    assert flow.store_calls == 2


async def test_erased_key_is_refused_not_rerun(services: Services) -> None:
    """After the customer's erasure the key answers 410 and neither step runs again."""
    flow = Flow(services, PartnerDeclined("never raised"), at="nowhere")
    assert (await flow.run("req_first")).status == 201
    await services.vault.erase_customer("cus-flow")
    with pytest.raises(IdempotencyKeyErased):
        await flow.run("req_second")
    assert (flow.partner_calls, flow.store_calls) == (1, 1)


class ErasedMidFlight(Flow):
    """A request whose customer is erased while it runs: before or after its vault write."""

    def __init__(self, services: Services, *, erase_at: str) -> None:
        super().__init__(services, PartnerDeclined("never raised"), at="nowhere")
        self.erase_at = erase_at

    async def partner_step(self, partner_key: str, token: str) -> dict[str, Any]:
        """The partner call, during which the erasure lands when placed here."""
        result = await super().partner_step(partner_key, token)
        if self.erase_at == "partner":
            await self.services.vault.erase_customer("cus-flow")
        return result

    async def store_step(self, stored: dict[str, Any], token: str) -> Record:
        """The vault write, after which the erasure lands when placed here."""
        record = await super().store_step(stored, token)
        if self.erase_at == "store":
            await self.services.vault.erase_customer("cus-flow")
        return record


@pytest.mark.parametrize("at", ["partner", "store"])
async def test_request_overtaken_by_erasure_is_410_and_leaves_nothing(
    services: Services, raw_rows: RawRows, at: str
) -> None:
    """An erasure landing mid-request wins: the request answers 410, a record it wrote for the
    erased customer is deleted again (its token was never handed out), the retry is 410."""
    flow = ErasedMidFlight(services, erase_at=at)
    with pytest.raises(IdempotencyKeyErased):
        await flow.run("req_first")
    assert await raw_rows.query("SELECT count(*) FROM records") == [(0,)]
    assert await raw_rows.query("SELECT count(*) FROM idempotency_keys") == [(0,)]
    with pytest.raises(IdempotencyKeyErased):
        await flow.run("req_second")
    assert flow.store_calls == (1 if at == "store" else 0)
