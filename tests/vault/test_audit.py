"""The audit trail: append-only, hash-chained, verifiable, exportable, failing closed."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.backends import REFUSED, RawRows
from vault import Kind, LocalKekProvider, Vault, new_token
from vault.audit import AuditLog, AuditPrune, EventType, Outcome, digest_resource, link_hash
from vault.backends.base import AUDIT_GENESIS
from vault.errors import AuditUnavailable


async def append_n(vault: Vault, n: int, *, actor: str = "billing") -> None:
    """Append ``n`` resolve events, one after another."""
    for _i in range(n):
        await vault.audit.append(
            EventType.RESOLVE,
            outcome=Outcome.SUCCESS,
            actor=actor,
            origin="127.0.0.1",
            resource=new_token(Kind.CARD),
        )


async def test_events_chain_and_verify(vault: Vault) -> None:
    """Appended events link to their predecessor and the whole chain verifies."""
    await append_n(vault, 5)
    events = await vault.audit.events()
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == AUDIT_GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    report = await vault.audit.verify()
    assert report.ok
    assert (report.events, report.head) == (5, events[-1].hash)


async def test_empty_chain_verifies(vault: Vault) -> None:
    """No events is a valid (empty) chain."""
    report = await vault.audit.verify()
    assert report.ok
    assert report.events == 0


async def test_concurrent_appends_keep_one_chain(vault: Vault) -> None:
    """Two hundred concurrent appends (one group commit) make one unbroken chain."""
    await asyncio.gather(
        *(
            vault.audit.append("token.resolve", outcome=True, actor=f"c{i}", origin=None)
            for i in range(200)
        )
    )
    report = await vault.audit.verify()
    assert report.ok
    assert report.events == 200


async def test_two_writers_on_one_file_keep_one_chain(vault: Vault, vault_url: str) -> None:
    """Appends from two independent connections (as from two processes) interleave validly."""
    other = await Vault.open(vault_url, vault.keys)
    try:
        await asyncio.gather(
            *(
                (vault if i % 2 else other).audit.append(
                    "token.resolve", outcome=True, actor="x", origin=None
                )
                for i in range(100)
            )
        )
    finally:
        await other.close()
    report = await vault.audit.verify()
    assert report.ok
    assert report.events == 100


async def test_edited_event_is_named(vault: Vault, raw_rows: RawRows) -> None:
    """Changing a field of event 3 makes verify report event 3 as edited."""
    await append_n(vault, 5)
    await raw_rows.tamper_audit("UPDATE audit_events SET actor = 'nobody' WHERE seq = 3")
    report = await vault.audit.verify()
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.kind) == (3, "edited")
    assert "event 3" in report.first_break.message


async def test_deleted_event_is_named(vault: Vault, raw_rows: RawRows) -> None:
    """Deleting event 2 makes verify report event 2 missing."""
    await append_n(vault, 5)
    await raw_rows.tamper_audit("DELETE FROM audit_events WHERE seq = 2")
    report = await vault.audit.verify()
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.kind) == (2, "deleted")
    assert "event 2 missing" in report.first_break.message


async def test_reordered_events_are_named(vault: Vault, raw_rows: RawRows) -> None:
    """Swapping events 3 and 4 makes verify report event 3 out of order."""
    await append_n(vault, 5)
    await raw_rows.tamper_audit(
        "UPDATE audit_events SET seq = -1 WHERE seq = 3",
        "UPDATE audit_events SET seq = 3 WHERE seq = 4",
        "UPDATE audit_events SET seq = 4 WHERE seq = -1",
    )
    report = await vault.audit.verify()
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.kind) == (3, "reordered")
    assert "follows event 3" not in report.first_break.message


async def test_rehashed_edit_without_the_key_is_caught(vault: Vault, raw_rows: RawRows) -> None:
    """An attacker who edits an event and recomputes hashes with a guessed key is caught."""
    await append_n(vault, 3)
    events = await vault.audit.events()
    forged = AuditLog(vault.backend, b"\x00" * 32)._link(events[1].prev_hash, events[1].entry)
    assert all(c in "0123456789abcdef" for c in forged)
    await raw_rows.tamper_audit(f"UPDATE audit_events SET hash = '{forged}' WHERE seq = 2")  # noqa: S608
    report = await vault.audit.verify()
    assert report.first_break is not None
    assert report.first_break.seq == 2


async def test_triggers_refuse_update_and_delete(vault: Vault, raw_rows: RawRows) -> None:
    """Without dropping the triggers, events cannot be changed or removed."""
    await append_n(vault, 1)
    with pytest.raises(REFUSED, match="append-only"):
        await raw_rows.query("UPDATE audit_events SET actor = 'x'")
    with pytest.raises(REFUSED, match="append-only"):
        await raw_rows.query("DELETE FROM audit_events")


async def test_append_fails_closed_when_storage_refuses(vault: Vault, raw_rows: RawRows) -> None:
    """When the table refuses inserts, append raises AuditUnavailable and writes nothing."""
    await raw_rows.break_audit_inserts()
    with pytest.raises(AuditUnavailable):
        await vault.audit.append("token.resolve", outcome=True, actor="a", origin=None)
    await raw_rows.query("DROP TABLE audit_events")
    with pytest.raises(AuditUnavailable):
        await vault.audit.append("token.resolve", outcome=True, actor="a", origin=None)


@pytest.mark.parametrize(
    "field", ["actor", "origin", "resource", "detail"], ids=lambda f: f"pan-in-{f}"
)
async def test_card_numbers_are_refused(vault: Vault, field: str) -> None:
    """A card-number-like digit run in any field is refused before it reaches storage."""
    kwargs: dict[str, object] = {"actor": "a", "origin": None}
    pan = "4242 4242 4242 4242"
    if field == "detail":
        kwargs["detail"] = {"note": pan}
    else:
        kwargs[field] = pan
    with pytest.raises(ValueError, match="card-number-like"):
        await vault.audit.append("token.resolve", outcome=True, **kwargs)  # type: ignore[arg-type]
    assert (await vault.audit.verify()).events == 0


async def test_export_writes_json_lines_since(vault: Vault) -> None:
    """export --since writes the events at or after the time, one JSON object per line."""
    old = datetime(2020, 1, 1, tzinfo=UTC)
    await vault.audit.append(
        "key.rotate", outcome=True, actor="cli:ops", origin="host", occurred_at=old
    )
    await append_n(vault, 2)
    lines: list[str] = []
    assert await vault.audit.export(lines.append, since=old + timedelta(days=1)) == 2
    docs = [json.loads(line) for line in lines]
    assert [d["seq"] for d in docs] == [2, 3]
    assert docs[0]["event_type"] == "token.resolve"
    assert set(docs[0]) == {
        "seq",
        "time",
        "event_type",
        "outcome",
        "actor",
        "origin",
        "resource",
        "detail",
        "prev_hash",
        "hash",
    }
    everything: list[str] = []
    assert await vault.audit.export(everything.append) == 3


async def test_chain_key_comes_from_the_key_ring(vault: Vault, tmp_path: Path) -> None:
    """A vault opened with another key ring cannot verify the chain (the HMAC key differs)."""
    from vault.keys.ring import init_keyring

    await append_n(vault, 2)
    other = tmp_path / "other.json"
    init_keyring(other)
    stranger = Vault(vault.backend, LocalKekProvider.from_file(other))
    report = await stranger.audit.verify()
    assert report.first_break is not None
    assert report.first_break.seq == 1


def test_link_hash_separates_none_from_empty() -> None:
    """None and empty string hash differently, so a cleared field is an edit."""
    from vault.backends.base import AuditEntry

    a = AuditEntry("t", "e", "success", None, "o", "r", "{}")
    b = AuditEntry("t", "e", "success", "", "o", "r", "{}")
    assert link_hash(b"k" * 32, AUDIT_GENESIS, a) != link_hash(b"k" * 32, AUDIT_GENESIS, b)


def _reference_link(key: bytes, prev_hash: str, entry: object) -> str:
    """The chain link as docs/keys-and-audit.md frames it, written out independently."""
    import hashlib
    import hmac
    import struct

    message = b"tokenproxy/audit-chain/v1\x00"
    values = [prev_hash] + [
        getattr(entry, name)
        for name in (
            "occurred_at",
            "event_type",
            "outcome",
            "actor",
            "origin",
            "resource",
            "detail",
        )
    ]
    for value in values:
        data = b"" if value is None else value.encode("utf-8")
        message += (b"\x00" if value is None else b"\x01") + struct.pack(">I", len(data)) + data
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def test_link_hash_matches_the_documented_framing() -> None:
    """link_hash keeps the chain's framing: stored chains verify unchanged."""
    from vault.backends.base import AuditEntry

    for entry in (
        AuditEntry(
            "2026-01-01T00:00:00.000000Z",
            "token.resolve",
            "success",
            "billing",
            "127.0.0.1",
            "vtok_card_x",
            "{}",
        ),
        AuditEntry("t", "e", "failure", None, None, None, '{"k":"\u00e9"}'),
        AuditEntry("t", "e", "success", "", "caf\u00e9", "", ""),
    ):
        assert link_hash(b"k" * 32, AUDIT_GENESIS, entry) == _reference_link(
            b"k" * 32, AUDIT_GENESIS, entry
        )


async def test_appended_events_carry_the_link_hash_of_their_fields(vault: Vault) -> None:
    """Each appended event's hash is link_hash over its predecessor's hash and its fields."""
    from vault.audit import audit_key

    rows = [
        await vault.audit.append(
            EventType.RESOLVE, outcome=Outcome.SUCCESS, actor="billing", origin=o, resource=r
        )
        for o, r in (("127.0.0.1", "vtok_card_a"), (None, None))
    ]
    key = audit_key(vault.keys.index_key)
    for row in rows:
        assert row.hash == link_hash(key, row.prev_hash, row.entry)
    assert rows[1].prev_hash == rows[0].hash


async def test_blind_index_resources_with_chance_digit_runs_are_accepted(vault: Vault) -> None:
    """A customer's blind index may hold a Luhn-valid digit run by chance; it is not card data."""
    index = "4242424242424242" + "ab" * 24
    assert len(index) == 64
    row = await vault.audit.append(
        "customer.erase", outcome=True, actor="eraser", origin=None, resource="customer:" + index
    )
    assert row.entry.resource == "customer:" + index
    with pytest.raises(ValueError, match="card-number-like"):
        await vault.audit.append(
            "customer.erase", outcome=True, actor="x", origin=None, resource="4242424242424242"
        )


@settings(max_examples=300, deadline=None)
@given(value=st.text(), other=st.text())
def test_resource_digest_holds_no_digits_and_names_one_value(value: str, other: str) -> None:
    """A digest resource is digit-free, keyed, and differs for different values."""
    key = b"k" * 32
    digest = digest_resource(key, "token", value)
    assert digest.startswith("token:")
    assert not any(c.isdigit() for c in digest)
    assert len(digest) == len("token:") + 32
    assert digest == digest_resource(key, "token", value)
    assert digest != digest_resource(b"j" * 32, "token", value)
    assert digest != digest_resource(key, "customer", value).replace("customer:", "token:")
    if other != value:
        assert digest != digest_resource(key, "token", other)


async def test_resource_digest_of_card_shaped_text_is_recorded(vault: Vault) -> None:
    """The digest of text holding a card number is accepted by append and holds none of it."""
    resource = vault.audit.digest("token", "vtok_card_4242424242424242AAAAAAAAAAAAAAAA")
    row = await vault.audit.append(
        "token.resolve", outcome=False, actor="billing", origin=None, resource=resource
    )
    assert row.entry.resource == resource
    assert "4242" not in resource


async def append_aged(vault: Vault, ages_in_days: list[int]) -> None:
    """Append one resolve event per age, oldest first, dated that many days ago."""
    now = datetime.now(UTC)
    for days in ages_in_days:
        await vault.audit.append(
            EventType.RESOLVE,
            outcome=Outcome.SUCCESS,
            actor="billing",
            origin="127.0.0.1",
            resource=new_token(Kind.CARD),
            occurred_at=now - timedelta(days=days),
        )


def year_ago() -> datetime:
    """The retention cut-off a 365-day policy uses."""
    return datetime.now(UTC) - timedelta(days=365)


async def test_prune_removes_old_events_behind_a_checkpoint(vault: Vault) -> None:
    """Events older than the cut-off go, a checkpoint records the chain state, and verify
    proves what remains from that checkpoint."""
    await append_aged(vault, [800, 500, 400, 100, 10])
    result = await vault.audit.prune(year_ago(), actor="cli:ops", origin="host")
    assert (result.pruned, result.through_seq, result.checkpoint_seq) == (3, 3, 6)
    events = await vault.audit.events()
    assert [e.seq for e in events] == [4, 5, 6]
    checkpoint = events[-1]
    assert checkpoint.entry.event_type == "audit.checkpoint"
    detail = json.loads(checkpoint.entry.detail)
    assert detail["covers_seq"] == 3
    assert detail["events"] == 3
    report = await vault.audit.verify()
    assert report.ok, report.first_break
    assert (report.events, report.first_seq, report.checkpoint_seq) == (3, 4, 6)
    assert report.head == checkpoint.hash


async def test_prune_again_covers_the_earlier_checkpoint(vault: Vault) -> None:
    """A second prune may remove the first checkpoint; its own checkpoint vouches instead."""
    await append_aged(vault, [800, 400])
    first = await vault.audit.prune(year_ago(), actor=None, origin=None)
    assert first.pruned == 2
    # Nothing is older now but the first checkpoint, which was written just now.
    assert (await vault.audit.prune(year_ago(), actor=None, origin=None)).pruned == 0
    later = datetime.now(UTC) + timedelta(days=1)
    await append_aged(vault, [-2])
    second = await vault.audit.prune(later, actor=None, origin=None)
    assert second.pruned == 1  # the first checkpoint, seq 3
    report = await vault.audit.verify()
    assert report.ok, report.first_break
    assert report.first_seq == 4


async def test_prune_dry_run_and_nothing_to_prune(vault: Vault) -> None:
    """A dry run counts and changes nothing; with nothing old, no checkpoint is written."""
    await append_aged(vault, [400, 10])
    dry = await vault.audit.prune(year_ago(), actor=None, origin=None, dry_run=True)
    assert (dry.pruned, dry.checkpoint_seq) == (1, None)
    assert len(await vault.audit.events()) == 2
    fresh = await vault.audit.prune(
        datetime.now(UTC) - timedelta(days=500), actor=None, origin=None
    )
    assert fresh == AuditPrune(0, None, None)
    assert len(await vault.audit.events()) == 2


async def test_triggers_allow_deleting_only_what_a_checkpoint_covers(
    vault: Vault, raw_rows: RawRows
) -> None:
    """After a prune, events past the checkpoint's cover, and the checkpoint, stay put."""
    await append_aged(vault, [800, 400, 10, 5])
    await vault.audit.prune(year_ago(), actor=None, origin=None)
    for seq in (3, 4, 5):  # 5 is the checkpoint
        with pytest.raises(REFUSED, match="append-only"):
            await raw_rows.query(f"DELETE FROM audit_events WHERE seq = {seq}")  # noqa: S608
    with pytest.raises(REFUSED, match="append-only"):
        await raw_rows.query("UPDATE audit_events SET actor = 'x' WHERE seq = 3")
    assert (await vault.audit.verify()).ok


async def test_checkpoints_are_written_by_prune_only(vault: Vault) -> None:
    """A caller cannot append a checkpoint (which would let the triggers delete events)."""
    with pytest.raises(ValueError, match="checkpoint"):
        await vault.audit.append(
            "audit.checkpoint", outcome=True, actor="x", origin=None, detail={"covers_seq": 9}
        )


async def test_deleting_past_the_checkpoint_is_caught(vault: Vault, raw_rows: RawRows) -> None:
    """An attacker deleting more than the checkpoint covers leaves a gap verify names."""
    await append_aged(vault, [800, 400, 10, 5])
    await vault.audit.prune(year_ago(), actor=None, origin=None)
    await raw_rows.tamper_audit("DELETE FROM audit_events WHERE seq = 3")
    report = await vault.audit.verify()
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.kind) == (3, "deleted")
    assert "no checkpoint covers" in report.first_break.message


async def test_deleting_the_oldest_without_a_checkpoint_is_caught(
    vault: Vault, raw_rows: RawRows
) -> None:
    """Deleting the oldest events without a checkpoint is a deletion, not a retention."""
    await append_n(vault, 4)
    await raw_rows.tamper_audit("DELETE FROM audit_events WHERE seq <= 2")
    report = await vault.audit.verify()
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.kind) == (1, "deleted")


async def test_forged_checkpoint_is_caught(vault: Vault, raw_rows: RawRows) -> None:
    """A checkpoint inserted without the chain key is an edit, so it vouches for nothing."""
    await append_n(vault, 4)
    events = await vault.audit.events()
    # Everything right but the HMAC: it names event 2's real hash, spelled in letters.
    covers = events[1].hash.translate(str.maketrans("0123456789abcdef", "abcdefghijklmnop"))
    detail = json.dumps({"covers_seq": 2, "covers_hash": covers}, separators=(",", ":"))
    await raw_rows.tamper_audit(
        "INSERT INTO audit_events VALUES (5, '2030-01-01T00:00:00.000000Z', 'audit.checkpoint',"  # noqa: S608
        f" 'success', NULL, NULL, NULL, '{detail}', '{events[-1].hash}', '{'f' * 64}')",
        "DELETE FROM audit_events WHERE seq <= 2",
    )
    report = await vault.audit.verify()
    assert report.first_break is not None
    assert (report.first_break.seq, report.first_break.kind) == (5, "edited")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("resource", "vtok_card_4242424242424242" + "A" * 16),
        ("resource", "vtok_card_" + "4242424242424242" * 2),
        ("resource", "vtok_inv_4242.4242.4242.4242_abcdefghijklm"),
        ("actor", "4242.4242.4242.4242"),
        ("origin", "4242_4242_4242_4242"),
        ("resource", "customer:4242\u200b4242\u200b4242\u200b4242"),
    ],
    ids=["token-padded", "token-of-digits", "token-dotted", "actor", "origin", "zero-width"],
)
async def test_every_field_is_checked_for_card_numbers(
    vault: Vault, field: str, value: str
) -> None:
    """No field is exempt from the card-number check, token-shaped or not, however written."""
    fields: dict[str, str | None] = {"actor": "billing", "origin": None, "resource": None}
    fields[field] = value
    with pytest.raises(ValueError, match="card-number-like"):
        await vault.audit.append("token.resolve", outcome=False, **fields)
    assert await vault.audit.events() == []


async def test_detail_values_are_checked_for_card_numbers(vault: Vault) -> None:
    """A card number in the detail map, in any script, is refused like any other field."""
    with pytest.raises(ValueError, match="card-number-like"):
        await vault.audit.append(
            "token.resolve",
            outcome=False,
            actor="billing",
            origin=None,
            detail={"note": "\uff14\uff12\uff14\uff12" * 4},
        )
