"""Key lifecycle at the vault level: rotate, rewrap (online, resumable), retire, fail closed."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.backends import RawRows
from vault import (
    DecryptionFailed,
    IdempotencyStore,
    KeyInUse,
    KeyRingError,
    Kind,
    LocalKekProvider,
    NewRecord,
    Vault,
    VaultError,
)
from vault.backends.base import DekRewrap
from vault.idempotency import Claim, Replay
from vault.keys.ring import init_keyring
from vault.rotation import (
    RewrapProgress,
    check_key_coverage,
    key_status,
    retire_version,
    rewrap,
    rewrap_remaining,
)


def record(customer: str | None = None, ref: str = "pm_rot") -> NewRecord:
    """A card record as the proxy stores it."""
    return NewRecord(
        kind=Kind.CARD,
        partner="stripe",
        partner_reference=ref,
        details={"brand": "visa", "last4": "4242"},
        customer_ref=customer,
    )


def provider_of(vault: Vault) -> LocalKekProvider:
    """The vault's provider, typed as the local one the fixture builds."""
    assert isinstance(vault.keys, LocalKekProvider)
    return vault.keys


async def test_rewrap_moves_every_key_and_records_still_read(
    vault: Vault, raw_rows: RawRows
) -> None:
    """After rotate + rewrap every DEK is on the new version and every record reads back."""
    stored = [await vault.put(record(f"cus-{i % 4}" if i % 2 else None)) for i in range(30)]
    assert await raw_rows.deks_by_version() == {1: 17}
    provider_of(vault).rotate()
    assert await rewrap_remaining(vault) == 17
    seen: list[int] = []
    progress = await rewrap(vault, batch_size=4, on_batch=lambda p: seen.append(p.remaining))
    assert (progress.rewrapped, progress.failed, progress.remaining) == (17, 0, 0)
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == 5
    assert await raw_rows.deks_by_version() == {2: 17}
    fresh = Vault(vault.backend, LocalKekProvider.from_file(provider_of(vault).ring.path))
    for r in stored:
        assert await fresh.get(r.token) == r


async def test_rewrap_resumes_after_interruption(vault: Vault, raw_rows: RawRows) -> None:
    """A rewrap stopped after two batches leaves a mix; running again finishes the rest."""
    for _ in range(12):
        await vault.put(record())
    provider_of(vault).rotate()

    class Stop(Exception):
        pass

    def stop_after_two(progress: RewrapProgress) -> None:
        if progress.batches == 2:
            raise Stop

    with pytest.raises(Stop):
        await rewrap(vault, batch_size=3, on_batch=stop_after_two)
    assert await raw_rows.deks_by_version() == {1: 6, 2: 6}
    progress = await rewrap(vault, batch_size=3)
    assert progress.total == 6
    assert progress.rewrapped == 6
    assert await raw_rows.deks_by_version() == {2: 12}
    assert (await rewrap(vault)).rewrapped == 0


async def test_rewrap_compare_and_set_skips_changed_rows(vault: Vault) -> None:
    """A rewrap change whose old wrapping no longer matches the row is not applied."""
    await vault.put(record())
    (row,) = await vault.backend.deks_not_on_version(99, after=None, limit=10)
    other = row.wrapped[:-1] + bytes([row.wrapped[-1] ^ 1])
    assert await vault.backend.rewrap_deks([DekRewrap(row.dek_id, 1, other, 2, b"new")]) == 0
    assert await vault.backend.rewrap_deks([DekRewrap(row.dek_id, 2, row.wrapped, 3, b"x")]) == 0
    assert await vault.backend.get_dek(row.dek_id) == row
    assert await vault.backend.rewrap_deks([DekRewrap(row.dek_id, 1, row.wrapped, 2, b"n")]) == 1
    changed = await vault.backend.get_dek(row.dek_id)
    assert changed is not None
    assert (changed.kek_version, changed.wrapped) == (2, b"n")


async def test_rewrap_leaves_unreadable_keys_and_reports_them(
    vault: Vault, raw_rows: RawRows
) -> None:
    """A tampered wrapped DEK is counted as failed and left alone; the others move."""
    for _ in range(5):
        await vault.put(record())
    ((dek_id, wrapped),) = await raw_rows.query("SELECT dek_id, wrapped FROM deks LIMIT 1")
    flipped = bytearray(wrapped)
    flipped[-1] ^= 1
    await raw_rows.set_dek(dek_id, "wrapped", bytes(flipped))
    provider_of(vault).rotate()
    progress = await rewrap(vault, batch_size=2)
    assert (progress.rewrapped, progress.failed, progress.remaining) == (4, 1, 1)
    assert await raw_rows.deks_by_version() == {1: 1, 2: 4}


async def test_retire_waits_for_live_idempotency_rows(vault: Vault) -> None:
    """A version still wrapping a live idempotency row is not retirable until it moves."""
    provider = provider_of(vault)
    await IdempotencyStore(vault, ttl=3600).begin("checkout", "order-1", b"{}")
    provider.rotate()
    assert await rewrap_remaining(vault) == 1
    with pytest.raises(KeyInUse):
        await retire_version(vault, provider, 1)
    # Once the row has expired and been purged, nothing holds version 1 any more.
    await vault.backend.idempotency_purge("9999-12-31T00:00:00.000000Z")
    assert await retire_version(vault, provider, 1) == 0


async def test_only_unexpired_idempotency_rows_hold_a_version(vault: Vault) -> None:
    """Expired rows (not yet purged) do not keep a key version in use."""
    provider = provider_of(vault)
    await IdempotencyStore(vault, ttl=0.1).begin("checkout", "order-3", b"{}")
    provider.rotate()
    await asyncio.sleep(0.3)
    assert await retire_version(vault, provider, 1) == 0


async def test_retire_refused_until_rewrapped(vault: Vault) -> None:
    """keys retire counts DEKs in the vault: refused while any use the version, then allowed."""
    stored = await vault.put(record("cus-r"))
    provider = provider_of(vault)
    provider.rotate()
    with pytest.raises(KeyInUse, match="still wraps 1 record data key"):
        await retire_version(vault, provider, 1)
    await rewrap(vault)
    assert await retire_version(vault, provider, 1) == 0
    states = {s.version: (s.state, s.deks) for s in await key_status(vault)}
    assert states == {1: ("retired", 0), 2: ("active", 1)}
    vault.forget_dek((await vault.backend.get_record(stored.token)).dek_id)  # type: ignore[union-attr]
    assert await vault.get(stored.token) == stored


async def test_serving_provider_follows_rotation_made_elsewhere(
    vault: Vault, keyring_path: Path
) -> None:
    """A server's provider reads DEKs rewrapped under a version it never loaded."""
    stored = [await vault.put(record()) for _ in range(3)]
    server = Vault(vault.backend, LocalKekProvider.from_file(keyring_path))
    admin = Vault(vault.backend, LocalKekProvider.from_file(keyring_path))
    provider_of(admin).rotate()
    await rewrap(admin)
    assert server.keys.active_version == 1
    for r in stored:
        assert await server.get(r.token) == r
    assert server.keys.active_version == 2


async def test_new_keys_follow_rotation_after_refresh(vault: Vault, keyring_path: Path) -> None:
    """Once a server notices the rotation, the DEKs it creates use the new version."""
    server = LocalKekProvider.from_file(keyring_path)
    LocalKekProvider.from_file(keyring_path).rotate()
    assert server.refresh() is False  # rate-limited: looked a moment ago
    assert server.refresh(force=True) is True
    v = Vault(vault.backend, server)
    stored = await v.put(record())
    row = await v.backend.get_record(stored.token)
    assert row is not None
    dek = await v.backend.get_dek(row.dek_id)
    assert dek is not None
    assert dek.kek_version == 2


async def test_refresh_ignores_a_corrupted_ring(vault: Vault, keyring_path: Path) -> None:
    """A ring file broken after start-up is ignored; the validated ring keeps working."""
    stored = await vault.put(record())
    keyring_path.write_text("{")  # noqa: ASYNC240 - a test's setup step
    keyring_path.chmod(0o600)  # noqa: ASYNC240
    assert provider_of(vault).refresh(force=True) is False
    vault.forget_dek((await vault.backend.get_record(stored.token)).dek_id)  # type: ignore[union-attr]
    assert await vault.get(stored.token) == stored


async def test_coverage_check_refuses_retired_and_unknown_versions(
    vault: Vault, raw_rows: RawRows, tmp_path: Path
) -> None:
    """DEKs under a version the ring lacks or retired make the start-up check fail."""
    await vault.put(record())
    await check_key_coverage(vault)
    await raw_rows.query("UPDATE deks SET kek_version = 7")
    with pytest.raises(KeyRingError, match="version 7 is not in the key ring"):
        await check_key_coverage(vault)
    await raw_rows.query("UPDATE deks SET kek_version = 1")
    provider = provider_of(vault)
    provider.rotate()
    provider.retire(1, in_use=0)  # bypassing the count, as a hand-edited ring would
    with pytest.raises(KeyRingError, match="version 1 is retired but still wraps 1"):
        await check_key_coverage(vault)


async def test_wrong_key_version_on_a_dek_fails(vault: Vault, raw_rows: RawRows) -> None:
    """Relabelling a DEK's version (to another existing key) fails authentication."""
    stored = await vault.put(record())
    provider_of(vault).rotate()
    await raw_rows.query("UPDATE deks SET kek_version = 2")
    vault.forget_dek((await vault.backend.get_record(stored.token)).dek_id)  # type: ignore[union-attr]
    with pytest.raises(DecryptionFailed):
        await vault.get(stored.token)


async def test_retired_key_cannot_open_its_deks(vault: Vault, raw_rows: RawRows) -> None:
    """A DEK left on a retired version is an error, never data."""
    stored = await vault.put(record())
    provider = provider_of(vault)
    provider.rotate()
    provider.retire(1, in_use=0)
    vault.forget_dek((await vault.backend.get_record(stored.token)).dek_id)  # type: ignore[union-attr]
    with pytest.raises(KeyRingError, match="retired"):
        await vault.get(stored.token)


async def test_wrapped_dek_moved_between_rows_fails(vault: Vault, raw_rows: RawRows) -> None:
    """A wrapped DEK copied onto another DEK row fails (its AAD names its own id)."""
    a = await vault.put(record("cus-a"))
    await vault.put(record("cus-b"))
    rows = await raw_rows.query("SELECT dek_id, wrapped FROM deks ORDER BY customer_idx")
    await raw_rows.set_dek(rows[0][0], "wrapped", rows[1][1])
    await raw_rows.set_dek(rows[1][0], "wrapped", rows[0][1])
    vault._deks.clear()
    with pytest.raises(DecryptionFailed):
        await vault.get(a.token)


async def test_a_rewrapped_ciphertext_still_cannot_move_customers(
    vault: Vault, raw_rows: RawRows
) -> None:
    """After a rewrap, a record ciphertext moved to another customer's row still fails."""
    a = await vault.put(record("cus-a"))
    b = await vault.put(record("cus-b"))
    provider_of(vault).rotate()
    await rewrap(vault)
    blob = await raw_rows.get(a.token, "ciphertext")
    await raw_rows.set("ciphertext", blob, token=b.token)
    with pytest.raises(DecryptionFailed):
        await vault.get(b.token)


_payload = st.fixed_dictionaries(
    {
        "ref": st.text(st.characters(codec="utf-8"), max_size=40),
        "customer": st.none() | st.sampled_from(["c1", "c2", "c3"]),
        "meta": st.dictionaries(st.sampled_from(["a", "b", "order"]), st.text(max_size=20)),
    }
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=st.lists(_payload, min_size=1, max_size=6), rotations=st.integers(1, 3))
def test_round_trip_survives_rotations_and_rewraps(
    payloads: list[dict[str, object]], rotations: int
) -> None:
    """Records and stored answers read back through any rotate + rewrap; old versions retire."""

    async def run(folder: Path) -> None:
        ring = folder / "ring.json"
        init_keyring(ring)
        v = await Vault.open(f"sqlite:///{folder / 'v.db'}", LocalKekProvider.from_file(ring))
        try:
            stored = []
            answers = IdempotencyStore(v, ttl=3600)
            for i, p in enumerate(payloads):
                claim = await answers.begin("checkout", f"key-{i}", str(p["ref"]).encode())
                assert isinstance(claim, Claim)
                await answers.complete(claim, json.dumps(p["meta"]).encode())
                new = NewRecord(
                    kind=Kind.CARD,
                    partner="stripe",
                    partner_reference=str(p["ref"]),
                    customer_ref=p["customer"],  # type: ignore[arg-type]
                    metadata=p["meta"],  # type: ignore[arg-type]
                )
                stored.append(await v.put(new))
            for _ in range(rotations):
                provider_of(v).rotate()
                assert (await rewrap(v, batch_size=2)).failed == 0
            assert await rewrap_remaining(v) == 0
            for old in range(1, rotations + 1):
                await retire_version(v, provider_of(v), old)
            reader = Vault(v.backend, LocalKekProvider.from_file(ring))
            for r in stored:
                assert await reader.get(r.token) == r
            replayer = IdempotencyStore(reader)
            for i, p in enumerate(payloads):
                replay = await replayer.begin("checkout", f"key-{i}", str(p["ref"]).encode())
                assert isinstance(replay, Replay)
                assert json.loads(replay.answer) == p["meta"]
        finally:
            await v.close()

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(Path(folder)))


@settings(max_examples=50, deadline=None)
@given(dek=st.binary(min_size=32, max_size=32), dek_id=st.text(min_size=1, max_size=30))
def test_wrap_unwrap_round_trip_across_versions(dek: bytes, dek_id: str) -> None:
    """A DEK wrapped under any version unwraps with a later provider, and only with its AAD."""
    from vault.crypto import dek_aad

    with tempfile.TemporaryDirectory() as folder:
        ring = Path(folder) / "ring.json"
        init_keyring(ring)
        first = LocalKekProvider.from_file(ring)
        version, wrapped = first.wrap(dek, dek_aad(dek_id, 1))
        later = LocalKekProvider.from_file(ring)
        later.rotate()
        assert later.unwrap(version, wrapped, dek_aad(dek_id, version)) == dek
        with pytest.raises(DecryptionFailed):
            later.unwrap(version, wrapped, dek_aad(dek_id + "x", version))
        with pytest.raises(VaultError):
            later.unwrap(2, wrapped, dek_aad(dek_id, 2))


async def test_rewrap_moves_idempotency_keys_so_retire_succeeds(vault: Vault) -> None:
    """Rewrap moves live idempotency rows' data keys too: list shows 0, then retire succeeds."""
    provider = provider_of(vault)
    store = IdempotencyStore(vault, ttl=3600)
    stored = await vault.put(record("cus-i"))
    done = await store.begin("checkout", "order-a", b"{}")
    assert isinstance(done, Claim)
    await store.complete(done, b'{"ok":true}')
    await store.begin("checkout", "order-b", b"{}")
    provider.rotate()
    before = {s.version: (s.deks, s.idempotency_keys, s.in_use) for s in await key_status(vault)}
    assert before[1] == (1, 2, 3)
    progress = await rewrap(vault, batch_size=1)
    assert (progress.total, progress.rewrapped, progress.failed, progress.remaining) == (3, 3, 0, 0)
    status = {s.version: (s.deks, s.idempotency_keys, s.in_use) for s in await key_status(vault)}
    assert status[1] == (0, 0, 0)
    assert await rewrap_remaining(vault) == 0
    assert await retire_version(vault, provider, 1) == 0
    # Everything moved still opens with version 1 destroyed.
    fresh = Vault(vault.backend, LocalKekProvider.from_file(provider.ring.path))
    assert await fresh.get(stored.token) == stored
    replay = await IdempotencyStore(fresh).begin("checkout", "order-a", b"{}")
    assert isinstance(replay, Replay)
    assert replay.answer == b'{"ok":true}'
    resumed = await IdempotencyStore(fresh).begin("checkout", "order-b", b"{}")
    assert isinstance(resumed, Claim)
    assert resumed.resumed


async def test_retire_message_matches_key_list(vault: Vault) -> None:
    """retire refuses naming the same per-version counts that keys list shows."""
    provider = provider_of(vault)
    await vault.put(record())
    await IdempotencyStore(vault, ttl=3600).begin("checkout", "order-m", b"{}")
    provider.rotate()
    (old,) = [s for s in await key_status(vault) if s.version == 1]
    assert (old.deks, old.idempotency_keys) == (1, 1)
    with pytest.raises(KeyInUse, match=r"1 record data key\(s\) and 1 idempotency key"):
        await retire_version(vault, provider, 1)


async def test_rewrap_skips_expired_idempotency_rows(vault: Vault, raw_rows: RawRows) -> None:
    """Expired idempotency rows are neither counted nor rewrapped: nothing reads them again."""
    provider = provider_of(vault)
    await IdempotencyStore(vault, ttl=3600).begin("checkout", "order-x", b"{}")
    await raw_rows.query("UPDATE idempotency_keys SET expires_at = '2000-01-01T00:00:00.000000Z'")
    provider.rotate()
    assert {s.version: s.in_use for s in await key_status(vault)} == {1: 0, 2: 0}
    assert (await rewrap(vault)).rewrapped == 0
    assert await retire_version(vault, provider, 1) == 0
