"""The answers the idempotent flow stores: encoded by the proxy, opaque to the vault, and
readable across versions (a key completed before an upgrade replays after it)."""

from __future__ import annotations

import pytest

from proxy.core.idempotent import REPLAYED_HEADER, Answer, create_once
from proxy.core.services import Services
from proxy.core.views import created_view
from vault import Claim, Kind, Record

# A 402 with a header, as earlier versions sealed it into the row (the vault built this JSON
# then; the proxy builds it now, byte for byte the same).
EARLIER = b'{"status": 402, "body": "{\\"error\\": {}}", "headers": {"Retry-After": "3"}}'
RAW = b'{"same": "body"}'


@pytest.mark.parametrize(
    "answer",
    [
        Answer(201, b'{"token": "vtok_inv_x"}'),
        Answer(402, b'{"error": {"code": "card_declined"}}', {"Retry-After": "3"}),
        Answer(422, '{"message": "\u00e5\u00e4\u00f6"}'.encode(), {"X-A": "1", "X-B": "2"}),
    ],
    ids=["created", "with-headers", "non-ascii"],
)
def test_answers_round_trip(answer: Answer) -> None:
    """Status, body bytes and headers come back exactly as they went in."""
    assert Answer.decode(answer.encode()) == answer


def test_encoding_is_the_one_earlier_versions_stored() -> None:
    """The stored form is unchanged, so replicas of either version read each other's rows
    during a rolling upgrade."""
    answer = Answer(402, b'{"error": {}}', {"Retry-After": "3"})
    assert answer.encode() == EARLIER
    assert Answer.decode(EARLIER) == answer
    assert Answer(201, b"{}").encode() == b'{"status": 201, "body": "{}"}'


async def test_key_completed_by_an_earlier_version_replays(services: Services) -> None:
    """A row an earlier version completed (its sealed answer in the earlier form) replays its
    status, bytes and headers, marked replayed, without running the request again."""
    store = services.idempotency
    assert store is not None
    claim = await store.begin("checkout", "k-upgrade", RAW)
    assert isinstance(claim, Claim)
    await store.complete(claim, EARLIER)

    async def never(*_: object) -> Record:
        raise AssertionError("a completed key must not run again")

    replay = await create_once(
        services,
        client="checkout",
        key="k-upgrade",
        raw=RAW,
        request_id="req_after_upgrade",
        customer_ref=None,
        kind=Kind.INVOICE,
        partner_step=None,
        store_step=never,
        respond=created_view,
    )
    assert replay == Answer(402, b'{"error": {}}', {"Retry-After": "3", REPLAYED_HEADER: "true"})
