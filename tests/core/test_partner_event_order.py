"""Whatever order Stripe delivers a payment method's events in, and however often, the token
ends as the newest event says (a property test over a real SQLite vault)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.core.partner_sync import receive_event
from proxy.core.services import Services
from proxy.infra.metrics import Metrics
from proxy.partners.ports import CardUpdate, PartnerEvent
from proxy.partners.stripe import StripePartner
from vault import Kind, LocalKekProvider, NewRecord, Vault
from vault import partner_sync as sync

_runs = itertools.count()

# (month, created) pairs with distinct times: the newest is unambiguous.
EVENTS = st.lists(
    st.tuples(st.integers(1, 12), st.integers(1_000, 1_100)),
    min_size=1,
    max_size=5,
    unique_by=lambda pair: pair[1],
)


async def _deliver(
    vault_path: Path, keyring_path: Path, events: list[PartnerEvent], order: list[int]
) -> int:
    """Deliver ``events`` in ``order`` (indexes, repeats allowed); the card's final month."""
    vault = await Vault.open(f"sqlite:///{vault_path}", LocalKekProvider.from_file(keyring_path))
    # Never called: events only need the partner's name.
    partner = StripePartner("sk_test_unused", api_base="http://127.0.0.1:9")
    try:
        record = await vault.put(
            NewRecord(
                kind=Kind.CARD,
                partner="stripe",
                partner_reference="pm_Order1",
                details={"brand": "visa", "last4": "0005", "exp_month": 12, "exp_year": 2030},
            )
        )
        await sync.link(vault, record)
        services = Services(vault=vault, partner=partner, metrics=Metrics())
        for index in order:
            await receive_event(services, events[index])
        month: int = (await vault.get(record.token)).details["exp_month"]
        return month
    finally:
        await partner.close()
        await vault.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=EVENTS, data=st.data())
def test_any_delivery_order_ends_at_the_newest_event(
    pairs: list[tuple[int, int]], data: st.DataObject, tmp_path: Path, keyring_path: Path
) -> None:
    """Shuffled and repeated deliveries leave the expiry month of the newest event."""
    run = next(_runs)
    events = [
        PartnerEvent(
            id=f"evt_order{run}x{i}",
            type="payment_method.updated",
            created=created,
            action="updated",
            payment_method="pm_Order1",
            card=CardUpdate(brand=None, last4=None, exp_month=month, exp_year=None),
        )
        for i, (month, created) in enumerate(pairs)
    ]
    order = data.draw(st.permutations(range(len(events))))
    repeats = data.draw(st.lists(st.sampled_from(range(len(events))), max_size=3))
    final = asyncio.run(
        _deliver(tmp_path / f"order{run}.db", keyring_path, events, [*order, *repeats])
    )
    newest = max(pairs, key=lambda pair: pair[1])
    assert final == newest[0]


def test_an_event_that_changes_nothing_still_outdates_older_ones(
    tmp_path: Path, keyring_path: Path
) -> None:
    """A newest event equal to the stored values, then an older one: the older is stale."""
    events = [
        PartnerEvent(
            id=f"evt_same{i}",
            type="payment_method.updated",
            created=created,
            action="updated",
            payment_method="pm_Order1",
            card=CardUpdate(brand=None, last4=None, exp_month=month, exp_year=None),
        )
        for i, (month, created) in enumerate([(5, 1000), (12, 1050)])
    ]
    # The card starts at month 12: the newest event (12 at 1050) changes no field.
    assert asyncio.run(_deliver(tmp_path / "same.db", keyring_path, events, [1, 0])) == 12
