"""Partner clean-up (detach, delete customer) is retried by the resilience layer alone.

A use case calls the partner once per operation; ``ResilientPartner`` retries it within
its policy. Counted here at the fault proxy, so a second retry loop stacked on top (which
would multiply the attempts) fails these tests.
"""

from __future__ import annotations

from typing import Any

from tests.cards import PARTNER_CARDS, VISA
from tests.conftest import RunningProxy
from tests.faultproxy import Fault, FaultProxy, Seen
from tests.proxy.test_cards_api import card_body
from tests.resilience.conftest import MakeProxy


def detaches(faults: FaultProxy) -> list[Seen]:
    """The detach requests the partner was sent (faulted or not)."""
    return [s for s in faults.seen if s.method == "POST" and s.path.endswith("/detach")]


def customer_deletes(faults: FaultProxy) -> list[Seen]:
    """The customer deletions the partner was sent (faulted or not)."""
    return [s for s in faults.seen if s.method == "DELETE" and s.path.startswith("/v1/customers/")]


def attempts(proxy: RunningProxy) -> int:
    """The most calls one partner operation may make: the first plus the policy's retries."""
    return proxy.settings.partner_max_retries + 1


async def saved_card(proxy: RunningProxy, customer: str, card: object = VISA) -> dict[str, Any]:
    """A card tokenized for ``customer`` (so saved on its partner customer)."""
    status, body, _ = await proxy.request(
        "POST", "/v1/cards", client="checkout", json=card_body(card, customer_ref=customer)
    )
    assert status == 201, body
    assert body is not None
    return body


async def test_detach_against_a_failing_partner_makes_at_most_the_policys_attempts(
    fproxy: RunningProxy, faults: FaultProxy
) -> None:
    """A token deletion whose detach keeps failing sends max_retries + 1 detaches, no more."""
    card = await saved_card(fproxy, "cus-detach-down")
    faults.script(then=Fault.error(503))
    status, body, _ = await fproxy.request("DELETE", f"/v1/tokens/{card['token']}", client="eraser")
    assert status == 502, body
    assert len(detaches(faults)) == attempts(fproxy) == 3
    # Nothing deleted: the request can be repeated.
    status, _, _ = await fproxy.request("GET", f"/v1/tokens/{card['token']}", client="orders")
    assert status == 200


async def test_transient_detach_failures_are_retried_to_success(
    fproxy: RunningProxy, faults: FaultProxy
) -> None:
    """A 503, then a detach whose answer is lost, then success: one deletion, three calls."""
    card = await saved_card(fproxy, "cus-detach-blip")
    faults.script(Fault.error(503), Fault.drop())
    status, body, _ = await fproxy.request("DELETE", f"/v1/tokens/{card['token']}", client="eraser")
    assert status == 200, body
    assert body is not None
    assert body["partner_detached"] is True
    assert [s.fault for s in detaches(faults)] == ["status", "drop", "pass"]


async def test_erasure_bounds_every_partner_call_by_the_policy(
    make_proxy: MakeProxy, faults: FaultProxy
) -> None:
    """Erasing against a failing partner: each detach and the customer deletion are tried
    max_retries + 1 times, and the erasure reports what remains."""
    # A breaker that stays closed, so every attempt the policy allows reaches the partner.
    proxy = await make_proxy(TOKENPROXY_BREAKER_FAILURES="100")
    # Two different cards: the same card saved twice answers one token.
    await saved_card(proxy, "cus-erase-down")
    await saved_card(proxy, "cus-erase-down", PARTNER_CARDS[1])
    faults.script(then=Fault.error(503))
    status, body, _ = await proxy.request("DELETE", "/v1/customers/cus-erase-down", client="eraser")
    assert status == 502, body
    assert body is not None
    assert body["error"]["code"] == "erasure_incomplete"  # type: ignore[index]
    assert len(detaches(faults)) == 2 * attempts(proxy)
    assert len(customer_deletes(faults)) == attempts(proxy)
