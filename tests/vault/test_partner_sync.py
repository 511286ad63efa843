"""Partner sync in the vault, on SQLite and PostgreSQL: records found by blind index,
changes applied once, compare-and-set against concurrent changes, and backfilled links."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.backends import RawRows
from vault import DecryptionFailed, Kind, NewRecord, Vault
from vault import partner_sync as sync


async def _card(vault: Vault, reference: str, customer: str | None = "cus_A1") -> str:
    """Store a card record for ``reference``, saved on ``customer``; its token."""
    details = {"brand": "visa", "last4": "0005", "exp_month": 1, "exp_year": 2030}
    if customer is not None:
        details["partner_customer"] = customer
    record = await vault.put(
        NewRecord(kind=Kind.CARD, partner="stripe", partner_reference=reference, details=details)
    )
    return record.token


async def test_linked_record_is_found_by_reference_and_customer(vault: Vault) -> None:
    """A linked card is found by its payment method and its partner customer, nothing else."""
    token = await _card(vault, "pm_L1")
    await sync.link(vault, await vault.get(token))
    [found] = await sync.by_reference(vault, "stripe", "pm_L1")
    assert found.record.token == token
    assert found.event_at is None
    assert [s.record.token for s in await sync.by_partner_customer(vault, "stripe", "cus_A1")] == [
        token
    ]
    assert await sync.by_reference(vault, "stripe", "pm_other") == []
    assert await sync.by_reference(vault, "other-partner", "pm_L1") == []


async def test_references_are_stored_only_as_blind_indexes(vault: Vault, raw_rows: RawRows) -> None:
    """Neither the payment method nor the partner customer id is in a clear column."""
    token = await _card(vault, "pm_Clear9")
    await sync.link(vault, await vault.get(token))
    [(ref_idx, cus_idx)] = await raw_rows.query(
        "SELECT reference_idx, partner_customer_idx FROM records WHERE token = ?", (token,)
    )
    assert "pm_Clear9" not in ref_idx
    assert "cus_A1" not in cus_idx
    assert ref_idx == sync.reference_index(vault, "stripe", "pm_Clear9")


async def test_records_stored_before_linking_are_backfilled(vault: Vault) -> None:
    """link_unlinked indexes every card record that has none, once."""
    tokens = {await _card(vault, f"pm_B{i}", customer=None) for i in range(3)}
    assert await sync.by_reference(vault, "stripe", "pm_B1") == []
    assert await sync.link_unlinked(vault) == 3
    assert await sync.link_unlinked(vault) == 0
    found = {
        s.record.token
        for i in range(3)
        for s in await sync.by_reference(vault, "stripe", f"pm_B{i}")
    }
    assert found == tokens


async def test_an_event_applies_once(vault: Vault) -> None:
    """The first apply changes the record; the same event id again is a duplicate, no change."""
    token = await _card(vault, "pm_E1")
    await sync.link(vault, await vault.get(token))
    [target] = await sync.by_reference(vault, "stripe", "pm_E1")
    change = sync.Change(target, {**target.record.details, "exp_year": 2031}, 100)
    event = sync.event_row("evt_once", "payment_method.updated", 100, "applied")
    assert await sync.apply_event(vault, event, [change]) == "applied"
    assert (await vault.get(token)).details["exp_year"] == 2031
    [after] = await sync.by_reference(vault, "stripe", "pm_E1")
    assert after.event_at == 100
    again = sync.Change(after, {**after.record.details, "exp_year": 2040}, 100)
    assert await sync.apply_event(vault, event, [again]) == "duplicate"
    assert (await vault.get(token)).details["exp_year"] == 2031
    assert await sync.event_outcome(vault, "evt_once") == "applied"


async def test_a_record_changed_since_it_was_read_is_a_conflict(vault: Vault) -> None:
    """Two events planned on the same read: the second is refused whole and not recorded."""
    token = await _card(vault, "pm_C1")
    await sync.link(vault, await vault.get(token))
    [target] = await sync.by_reference(vault, "stripe", "pm_C1")
    first = sync.Change(target, {**target.record.details, "last4": "1111"}, 10)
    second = sync.Change(target, {**target.record.details, "last4": "2222"}, 11)
    assert (
        await sync.apply_event(vault, sync.event_row("evt_c1", "t.x", 10, "applied"), [first])
        == "applied"
    )
    outcome = await sync.apply_event(
        vault, sync.event_row("evt_c2", "t.x", 11, "applied"), [second]
    )
    assert outcome == "conflict"
    assert await sync.event_outcome(vault, "evt_c2") is None
    assert (await vault.get(token)).details["last4"] == "1111"


async def test_a_resealed_record_stays_bound_to_its_token(vault: Vault, raw_rows: RawRows) -> None:
    """The ciphertext of a changed record, moved to another token's row, fails authentication."""
    token = await _card(vault, "pm_M1")
    other = await _card(vault, "pm_M2")
    await sync.link(vault, await vault.get(token))
    [target] = await sync.by_reference(vault, "stripe", "pm_M1")
    change = sync.Change(
        target, {**target.record.details, "detached_at": "2026-01-01T00:00:00.000000Z"}, 5
    )
    assert (
        await sync.apply_event(vault, sync.event_row("evt_m", "t.x", 5, "applied"), [change])
        == "applied"
    )
    [(moved,)] = await raw_rows.query("SELECT ciphertext FROM records WHERE token = ?", (token,))
    await raw_rows.query("UPDATE records SET ciphertext = ? WHERE token = ?", (moved, other))
    with pytest.raises(DecryptionFailed):
        await vault.get(other)


async def test_deleted_records_are_no_longer_found(vault: Vault) -> None:
    """Deleting a token removes it from partner lookups with its row."""
    token = await _card(vault, "pm_D1")
    await sync.link(vault, await vault.get(token))
    assert await vault.delete(token)
    assert await sync.by_reference(vault, "stripe", "pm_D1") == []


async def test_old_event_ids_are_forgotten_and_recent_ones_kept(vault: Vault) -> None:
    """forget_events drops event ids received before the cut-off and keeps the rest."""
    event = sync.event_row("evt_old", "charge.succeeded", 1, "ignored")
    assert await sync.apply_event(vault, event, []) == "applied"
    assert await sync.forget_events(vault, timedelta(days=30)) == 0
    assert await sync.event_outcome(vault, "evt_old") == "ignored"
    assert await sync.forget_events(vault, timedelta(0)) == 1
    assert await sync.event_outcome(vault, "evt_old") is None
