"""The vault records which key ring it belongs to and refuses any other (both backends)."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.backends import RawRows
from vault import IdempotencyStore, KeyRingMismatch, Kind, LocalKekProvider, NewRecord, Vault
from vault.audit import EventType, Outcome
from vault.keys.check import INDEX_CHECK
from vault.keys.ring import init_keyring
from vault.rotation import retire_version, rewrap


def card(customer: str | None = None) -> NewRecord:
    """A card record as the proxy stores it."""
    return NewRecord(
        kind=Kind.CARD, partner="stripe", partner_reference="pm_chk", customer_ref=customer
    )


def b64(key: bytes) -> str:
    """A key as the ring file holds it."""
    return base64.b64encode(key).decode()


def derived_ring(source: Path, target: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the ring at ``source`` with ``change`` applied, written 0600 at ``target``."""
    doc = json.loads(source.read_text())
    change(doc)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc))
    target.chmod(0o600)
    return target


def other_index_key(doc: dict[str, Any]) -> None:
    """Same KEKs, another index key."""
    doc["index_key"] = b64(secrets.token_bytes(32))


def other_kek(doc: dict[str, Any]) -> None:
    """Same index key, another key for version 1."""
    doc["keys"][0]["key"] = b64(secrets.token_bytes(32))


async def open_with(url: str, ring: Path) -> Vault:
    """Open the vault at ``url`` with the ring file at ``ring`` (the check included)."""
    return await Vault.open(url, LocalKekProvider.from_file(ring))


async def filled(url: str, ring: Path) -> None:
    """A vault with a customer's record, a lone record, an idempotency row and an audit event."""
    v = await open_with(url, ring)
    try:
        await v.put(card("cus-1"))
        await v.put(card())
        await IdempotencyStore(v).begin("checkout", "k-1", b"{}")
        await v.audit.append(
            EventType.KEY_INIT, outcome=Outcome.SUCCESS, actor="cli:test", origin="test"
        )
    finally:
        await v.close()


async def test_the_right_ring_passes_and_records_check_values(
    vault_url: str, keyring_path: Path, raw_rows: RawRows
) -> None:
    """The first open records the index key's and version 1's check values; reopening passes."""
    await filled(vault_url, keyring_path)
    rows = dict(await raw_rows.query("SELECT kek_version, check_value FROM key_checks"))
    assert set(rows) == {INDEX_CHECK, 1}
    v = await open_with(vault_url, keyring_path)
    await v.check_key_ring()
    await v.close()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        ("fresh", "its index key is not the one the vault recorded"),
        ("other-index", "its index key is not the one the vault recorded"),
        ("other-kek", "its key version 1 is not the one the vault recorded"),
    ],
)
async def test_a_ring_of_another_vault_is_refused(
    vault_url: str, keyring_path: Path, tmp_path: Path, make: str, problem: str
) -> None:
    """A fresh ring, the right KEK with another index key, or the reverse: refused in one line."""
    await filled(vault_url, keyring_path)
    wrong = tmp_path / "wrong" / "keyring.json"
    if make == "fresh":
        init_keyring(wrong)
    else:
        derived_ring(keyring_path, wrong, other_index_key if make == "other-index" else other_kek)
    with pytest.raises(KeyRingMismatch) as caught:
        await Vault.open(vault_url, LocalKekProvider.from_file(wrong), source=f"key ring {wrong}")
    message = str(caught.value)
    assert "\n" not in message
    assert str(wrong) in message
    assert problem in message


async def test_a_fresh_ring_is_refused_even_by_an_empty_vault(
    vault_url: str, keyring_path: Path, tmp_path: Path
) -> None:
    """Once a vault recorded its ring (keys init), another ring is refused with no data yet."""
    v = await open_with(vault_url, keyring_path)
    await v.close()
    fresh = tmp_path / "fresh.json"
    init_keyring(fresh)
    with pytest.raises(KeyRingMismatch):
        await open_with(vault_url, fresh)


@pytest.mark.parametrize("row", [INDEX_CHECK, 1])
async def test_a_tampered_check_value_is_refused(
    vault_url: str, keyring_path: Path, raw_rows: RawRows, row: int
) -> None:
    """A flipped bit in a recorded check value makes the right ring fail the check."""
    await filled(vault_url, keyring_path)
    ((value,),) = await raw_rows.query(
        "SELECT check_value FROM key_checks WHERE kek_version = ?", (row,)
    )
    flipped = bytearray(value)
    flipped[0] ^= 1
    await raw_rows.query(
        "UPDATE key_checks SET check_value = ? WHERE kek_version = ?", (bytes(flipped), row)
    )
    with pytest.raises(KeyRingMismatch):
        await open_with(vault_url, keyring_path)


async def test_a_check_made_on_a_live_vault_sees_tampering(vault: Vault, raw_rows: RawRows) -> None:
    """A vault that passed once re-verifies when the recorded values change under it."""
    await vault.put(card())
    await vault.check_key_ring()
    await raw_rows.query("UPDATE key_checks SET check_value = ? WHERE kek_version = 0", (b"x",))
    with pytest.raises(KeyRingMismatch):
        await vault.check_key_ring()


async def test_rotation_records_and_retire_removes_check_values(
    vault: Vault, raw_rows: RawRows, keyring_path: Path
) -> None:
    """A rotated ring passes and records its new version; retire removes the old one's row."""
    await vault.put(card("cus-r"))
    assert isinstance(vault.keys, LocalKekProvider)
    vault.keys.rotate()
    await vault.check_key_ring()
    versions = {v for (v,) in await raw_rows.query("SELECT kek_version FROM key_checks")}
    assert versions == {INDEX_CHECK, 1, 2}
    await rewrap(vault)
    await retire_version(vault, vault.keys, 1)
    versions = {v for (v,) in await raw_rows.query("SELECT kek_version FROM key_checks")}
    assert versions == {INDEX_CHECK, 2}
    fresh = Vault(vault.backend, LocalKekProvider.from_file(keyring_path))
    await fresh.check_key_ring()


async def test_a_ring_missing_a_recorded_version_is_refused(
    vault_url: str, keyring_path: Path, tmp_path: Path
) -> None:
    """A ring restored from before a rotation lacks the version the vault recorded: refused."""
    before = derived_ring(keyring_path, tmp_path / "backup" / "keyring.json", lambda doc: None)
    v = await open_with(vault_url, keyring_path)
    assert isinstance(v.keys, LocalKekProvider)
    v.keys.rotate()
    await v.check_key_ring()
    await v.close()
    with pytest.raises(KeyRingMismatch, match="lacks key version 2"):
        await open_with(vault_url, before)


async def forget_the_feature(raw_rows: RawRows) -> None:
    """Turn the vault back into one made before check values existed (schema 5)."""
    await raw_rows.query("DROP TABLE key_checks")
    await raw_rows.query("DELETE FROM schema_migrations WHERE version = 6")


@pytest.mark.parametrize("audited", [True, False])
async def test_a_vault_made_before_check_values_records_them_with_a_ring_that_opens_it(
    vault_url: str, keyring_path: Path, raw_rows: RawRows, tmp_path: Path, audited: bool
) -> None:
    """First open of an older vault: a ring that opens its data is recorded, others refused."""
    v = await open_with(vault_url, keyring_path)
    await v.put(card("cus-old"))
    if audited:
        await v.audit.append(
            EventType.KEY_INIT, outcome=Outcome.SUCCESS, actor="cli:test", origin="test"
        )
    await v.close()
    await forget_the_feature(raw_rows)
    for change in (other_index_key, other_kek):
        wrong = derived_ring(keyring_path, tmp_path / change.__name__ / "ring.json", change)
        with pytest.raises(KeyRingMismatch):
            await open_with(vault_url, wrong)
        assert await raw_rows.count("key_checks") == 0
    fresh = tmp_path / "fresh.json"
    init_keyring(fresh)
    with pytest.raises(KeyRingMismatch):
        await open_with(vault_url, fresh)
    v = await open_with(vault_url, keyring_path)
    await v.close()
    assert await raw_rows.count("key_checks") == 2


async def test_an_older_empty_vault_takes_the_ring_it_is_opened_with(
    vault_url: str, keyring_path: Path, raw_rows: RawRows
) -> None:
    """An older vault that holds nothing yet simply records the ring it is opened with."""
    v = await open_with(vault_url, keyring_path)
    await v.close()
    await forget_the_feature(raw_rows)
    v = await open_with(vault_url, keyring_path)
    await v.close()
    assert await raw_rows.count("key_checks") == 2


async def test_unmigrated_schema_is_named(
    vault_url: str, keyring_path: Path, raw_rows: RawRows
) -> None:
    """Opening an unmigrated vault without migrations says to run migrate, in one line."""
    v = await open_with(vault_url, keyring_path)
    await v.close()
    await forget_the_feature(raw_rows)
    with pytest.raises(Exception, match="run `tokenproxy migrate`"):
        await Vault.open(vault_url, LocalKekProvider.from_file(keyring_path), migrate=False)


_MUTATIONS = st.fixed_dictionaries(
    {
        "index": st.booleans(),
        "kek": st.booleans(),
        "flip": st.integers(0, 31),
    }
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation=_MUTATIONS)
def test_any_change_to_the_ring_is_refused_and_none_passes(mutation: dict[str, Any]) -> None:
    """A ring differing from the recorded one in any bit of any key is refused; equal passes."""

    def mutate(doc: dict[str, Any]) -> None:
        for wanted, field in ((mutation["index"], "index_key"), (mutation["kek"], "key")):
            if not wanted:
                continue
            holder = doc if field == "index_key" else doc["keys"][0]
            raw = bytearray(base64.b64decode(holder[field]))
            raw[mutation["flip"]] ^= 0x01
            holder[field] = b64(bytes(raw))

    async def run(folder: Path) -> None:
        ring = folder / "ring.json"
        init_keyring(ring)
        url = f"sqlite:///{folder / 'v.db'}"
        await filled(url, ring)
        candidate = derived_ring(ring, folder / "candidate" / "ring.json", mutate)
        if mutation["index"] or mutation["kek"]:
            with pytest.raises(KeyRingMismatch):
                await open_with(url, candidate)
        else:
            await (await open_with(url, candidate)).close()

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(Path(folder)))


# -- a running process's ring follows the file only where it continues ---------------


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (other_index_key, "index key differs"),
        (other_kek, "version 1 holds another key"),
        (lambda doc: doc["keys"].pop(0), "version 1 is missing"),
    ],
)
def test_reload_refuses_a_ring_that_does_not_continue_the_one_in_force(
    keyring_path: Path,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    problem: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ring file replaced by another ring is not adopted; the ring in force stays, logged."""
    provider = LocalKekProvider.from_file(keyring_path)
    LocalKekProvider.from_file(keyring_path).rotate()

    def swap(doc: dict[str, Any]) -> None:
        change(doc)
        if not any(k["state"] == "active" for k in doc["keys"]):
            doc["keys"][0]["state"] = "active"
            doc["active"] = doc["keys"][0]["version"]

    staged = derived_ring(keyring_path, tmp_path / "staged.json", swap)
    before = provider.ring
    staged.replace(keyring_path)
    with caplog.at_level("WARNING", logger="vault.keys.ring"):
        assert provider.refresh(force=True) is False
    assert provider.ring is before
    assert problem in caplog.text
    assert "keeping the ring in force" in caplog.text


def test_reload_adopts_a_rotation_and_a_retirement(keyring_path: Path) -> None:
    """Adding a version and retiring one continue the ring in force: both are adopted."""
    provider = LocalKekProvider.from_file(keyring_path)
    admin = LocalKekProvider.from_file(keyring_path)
    admin.rotate()
    assert provider.refresh(force=True) is True
    assert provider.active_version == 2
    admin.retire(1, in_use=0)
    assert provider.refresh(force=True) is True
    assert [i.state.value for i in provider.versions()] == ["retired", "active"]
