"""The vault's idempotency store: takeover rules, expiry and purge, sealing, keyed hashes."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.backends import RawRows
from vault import (
    Claim,
    DecryptionFailed,
    ErasureStatus,
    IdempotencyBusy,
    IdempotencyErased,
    IdempotencyMismatch,
    IdempotencyStore,
    Kind,
    LocalKekProvider,
    Owner,
    Replay,
    Vault,
    iso,
    token_kind,
    utcnow,
)
from vault.keys.ring import init_keyring

BODY = b'{"number": "4242424242424242", "cvc": "123"}'


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


async def test_resume_after_owner_died_returns_partner_result(vault: Vault) -> None:
    """A row whose owner process is gone is taken over, with the partner's answer kept."""
    dead = IdempotencyStore(vault, owner=Owner(socket.gethostname(), dead_pid(), "old"))
    claim = await dead.begin("checkout", "k1", BODY)
    assert isinstance(claim, Claim)
    await dead.record_partner(claim, {"reference": "pm_1", "token": "vtok_card_x"})
    alive = IdempotencyStore(vault)
    resumed = await alive.begin("checkout", "k1", BODY)
    assert isinstance(resumed, Claim)
    assert resumed.resumed
    assert resumed.partner_result == {"reference": "pm_1", "token": "vtok_card_x"}
    assert resumed.partner_key == claim.partner_key
    await alive.complete(resumed, b'{"ok": true}')
    assert await alive.begin("checkout", "k1", BODY) == Replay(b'{"ok": true}')


async def test_reserved_token_is_the_same_for_every_attempt_at_a_key(vault: Vault) -> None:
    """A key taken over after its owner died reserves the same token; another key, or the
    same key made again after its row went, reserves another, and each is a valid token."""
    dead = IdempotencyStore(vault, owner=Owner(socket.gethostname(), dead_pid(), "old"))
    claim = await dead.begin("checkout", "k-token", BODY)
    assert isinstance(claim, Claim)
    reserved = claim.reserved_token(Kind.CARD)
    assert token_kind(reserved) is Kind.CARD
    alive = IdempotencyStore(vault)
    resumed = await alive.begin("checkout", "k-token", BODY)
    assert isinstance(resumed, Claim)
    assert resumed.resumed
    assert resumed.reserved_token(Kind.CARD) == reserved
    assert token_kind(resumed.reserved_token(Kind.BANK)) is Kind.BANK
    other = await alive.begin("checkout", "k-other", BODY)
    assert isinstance(other, Claim)
    assert other.reserved_token(Kind.CARD) != reserved
    assert "token_seed" not in repr(resumed)


async def test_live_owner_elsewhere_blocks_until_stale(vault: Vault) -> None:
    """An owner on another host holds the key until the row has been silent too long."""
    remote = IdempotencyStore(vault, owner=Owner("other-host", 1, "boot"))
    assert isinstance(await remote.begin("checkout", "k2", BODY), Claim)
    patient = IdempotencyStore(vault, stale_after=3600)
    with pytest.raises(IdempotencyBusy):
        await patient.begin("checkout", "k2", BODY)
    impatient = IdempotencyStore(vault, stale_after=0.05)
    await asyncio.sleep(0.1)
    taken = await impatient.begin("checkout", "k2", BODY)
    assert isinstance(taken, Claim)
    assert taken.resumed


async def test_racing_inserts_from_separate_connections_claim_once(
    vault: Vault, vault_url: str, keyring_path: Path
) -> None:
    """Replicas racing on one new key, each on its own connection: exactly one claims it."""
    vaults = [vault] + [
        await Vault.open(vault_url, LocalKekProvider.from_file(keyring_path)) for _ in range(3)
    ]
    try:
        for round_ in range(5):
            key = f"race-{round_}"
            stores = [
                IdempotencyStore(v, owner=Owner(f"replica-{i}", 1, "boot"), stale_after=3600)
                for i, v in enumerate(vaults * 2)
            ]
            outcomes = await asyncio.gather(
                *(s.begin("checkout", key, BODY) for s in stores), return_exceptions=True
            )
            claims = [o for o in outcomes if isinstance(o, Claim)]
            assert len(claims) == 1, outcomes
            assert all(isinstance(o, (Claim, IdempotencyBusy)) for o in outcomes), outcomes
    finally:
        for v in vaults[1:]:
            await v.close()


async def test_other_body_is_a_mismatch_even_while_in_flight(vault: Vault) -> None:
    """Another body under the same key is refused whatever the row's state."""
    store = IdempotencyStore(vault)
    assert isinstance(await store.begin("checkout", "k3", BODY), Claim)
    with pytest.raises(IdempotencyMismatch):
        await store.begin("checkout", "k3", BODY + b" ")


async def test_released_key_is_resumed_at_once(vault: Vault) -> None:
    """A key released after a transient failure is taken over by the next attempt."""
    store = IdempotencyStore(vault, stale_after=3600)
    claim = await store.begin("checkout", "k4", BODY)
    assert isinstance(claim, Claim)
    with pytest.raises(IdempotencyBusy):
        await store.begin("checkout", "k4", BODY)
    await store.release(claim)
    again = await store.begin("checkout", "k4", BODY)
    assert isinstance(again, Claim)
    assert again.resumed


async def test_expired_keys_are_purged_and_reusable(vault: Vault) -> None:
    """After the TTL a key is purged and starts afresh, even with another body."""
    store = IdempotencyStore(vault, ttl=0.05)
    claim = await store.begin("checkout", "k5", BODY)
    assert isinstance(claim, Claim)
    await store.complete(claim, b"{}")
    await asyncio.sleep(0.1)
    fresh = await store.begin("checkout", "k5", b"{}")
    assert isinstance(fresh, Claim)
    assert not fresh.resumed
    await store.complete(fresh, b"{}")
    await asyncio.sleep(0.1)
    assert await store.purge_expired() == 1
    assert await store.purge_expired() == 0


async def test_tampered_response_fails_closed(vault: Vault, raw_rows: RawRows) -> None:
    """A stored answer moved from another row does not decrypt: no replay of foreign data."""
    store = IdempotencyStore(vault)
    for key in ("a", "b"):
        claim = await store.begin("checkout", key, BODY)
        assert isinstance(claim, Claim)
        await store.complete(claim, key.encode())
    a_idx, b_idx = store.key_index("checkout", "a"), store.key_index("checkout", "b")
    await raw_rows.query(
        "UPDATE idempotency_keys SET response ="
        " (SELECT response FROM idempotency_keys WHERE key_idx = ?) WHERE key_idx = ?",
        (a_idx, b_idx),
    )
    with pytest.raises(DecryptionFailed):
        await store.begin("checkout", "b", BODY)


async def test_hashes_are_keyed_and_scoped(vault: Vault) -> None:
    """The body hash is an HMAC (not SHA-256), and key indexes differ per client."""
    store = IdempotencyStore(vault)
    assert store.request_mac(BODY) != hashlib.sha256(BODY).hexdigest()
    assert store.key_index("a", "k") != store.key_index("b", "k")
    assert store.partner_key("a", "k") != store.partner_key("b", "k")
    assert store.partner_key("a", "k").startswith("tp_")


def test_owner_round_trips_and_detects_dead_processes() -> None:
    """An owner string parses back; a reaped pid on this host counts as gone."""
    me = Owner.current()
    assert Owner.parse(str(me)) == me
    assert Owner.parse("nonsense") is None
    assert me.is_gone(Owner(me.host, dead_pid(), "x"))
    assert me.is_gone(Owner(me.host, me.pid, "earlier-boot"))
    assert not me.is_gone(Owner("elsewhere", 1, "x"))
    assert not me.is_gone(Owner(me.host, 1, "x"))


async def test_erasure_deletes_the_customers_keys_and_leaves_a_tombstone(
    vault: Vault, raw_rows: RawRows
) -> None:
    """Erasing a customer deletes every idempotency row naming it (done or in flight, made
    before the customer had any record), keeps others, and a retry of an erased key raises
    IdempotencyErased instead of replaying or running again."""
    store = IdempotencyStore(vault)
    done = await store.begin("checkout", "done", BODY, customer_ref="cus-idem")
    assert isinstance(done, Claim)
    await store.record_partner(done, {"reference": "pm_idem", "token": "vtok_card_idem"})
    await store.complete(done, b'{"token": "vtok_card_idem"}')
    flying = await store.begin("checkout", "flying", BODY, customer_ref="cus-idem")
    assert isinstance(flying, Claim)
    other = await store.begin("checkout", "other", BODY + b"\n", customer_ref="cus-else")
    assert isinstance(other, Claim)
    await store.complete(other, b'{"token": "vtok_card_else"}')
    sealed = await raw_rows.query(
        "SELECT key_idx, wrapped_dek, response, partner_result, request_mac"
        " FROM idempotency_keys WHERE key_idx = ?",
        (done.key_idx,),
    )

    erasure = await vault.erase_customer("cus-idem")

    assert erasure.idempotency_keys == 2
    assert erasure.status == ErasureStatus.ERASED
    left = await raw_rows.query("SELECT key_idx FROM idempotency_keys")
    assert left == [(other.key_idx,)]
    for key in ("done", "flying"):
        with pytest.raises(IdempotencyErased):
            await store.begin("checkout", key, BODY, customer_ref="cus-idem")
        # Another body gets the same answer: the tombstone holds no request hash to compare.
        with pytest.raises(IdempotencyErased):
            await store.begin("checkout", key, BODY + b" ", customer_ref="cus-idem")
    assert await store.begin("checkout", "other", BODY + b"\n") == Replay(
        b'{"token": "vtok_card_else"}'
    )
    # Nothing the erased row held survives anywhere in the database (key, answers, MAC).
    ((_, wrapped, response, partner, mac),) = sealed
    stored = await raw_rows.stored_bytes()
    for value in (wrapped, response, partner, mac.encode()):
        assert value not in stored
    tombstones = await raw_rows.query("SELECT * FROM idempotency_erased ORDER BY key_idx")
    assert sorted(t[0] for t in tombstones) == sorted([done.key_idx, flying.key_idx])
    assert all(len(t) == 2 for t in tombstones)


async def test_erased_key_is_fresh_again_after_its_ttl(vault: Vault, raw_rows: RawRows) -> None:
    """A tombstone lasts as long as the row would have; past that the key starts afresh and
    the purge removes the tombstone with the expired rows."""
    store = IdempotencyStore(vault)
    claim = await store.begin("checkout", "short", BODY, customer_ref="cus-ttl")
    assert isinstance(claim, Claim)
    await store.complete(claim, b"{}")
    ((expires,),) = await raw_rows.query("SELECT expires_at FROM idempotency_keys")
    await vault.erase_customer("cus-ttl")
    assert await raw_rows.query("SELECT expires_at FROM idempotency_erased") == [(expires,)]
    with pytest.raises(IdempotencyErased):
        await store.begin("checkout", "short", BODY)
    # Time passes beyond the key's expiry (moved back rather than waited for).
    await raw_rows.query("UPDATE idempotency_erased SET expires_at = ?", (iso(utcnow()),))
    assert isinstance(await store.begin("checkout", "short", BODY), Claim)
    assert await store.purge_expired() == 0
    assert await raw_rows.query("SELECT count(*) FROM idempotency_erased") == [(0,)]


async def test_rows_without_a_customer_are_not_erased(vault: Vault) -> None:
    """A key whose request named no customer is nobody's to erase: it still replays."""
    store = IdempotencyStore(vault)
    claim = await store.begin("checkout", "anon", BODY)
    assert isinstance(claim, Claim)
    await store.complete(claim, b'{"a": 1}')
    erasure = await vault.erase_customer("cus-nobody")
    assert erasure.status == ErasureStatus.NOT_FOUND
    assert await store.begin("checkout", "anon", BODY) == Replay(b'{"a": 1}')


def on_a_fresh_vault(scenario: Callable[[Vault], Awaitable[None]]) -> None:
    """Run ``scenario`` on a new SQLite vault in a directory of its own: each hypothesis
    example needs one, which the function-scoped ``vault`` fixture does not give."""

    async def run(directory: Path) -> None:
        ring = directory / "keyring.json"
        init_keyring(ring)
        vault = await Vault.open(
            f"sqlite:///{directory / 'vault.db'}", LocalKekProvider.from_file(ring)
        )
        try:
            await scenario(vault)
        finally:
            await vault.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(Path(directory)))


@settings(max_examples=25, deadline=None)
@given(answer=st.binary(max_size=2048))
def test_stored_answer_is_opaque_bytes(answer: bytes) -> None:
    """Whatever bytes the caller stores as its answer (not UTF-8, NULs, empty) come back on
    replay exactly: the vault neither reads nor shapes them."""

    async def scenario(vault: Vault) -> None:
        store = IdempotencyStore(vault)
        claim = await store.begin("checkout", "opaque", BODY)
        assert isinstance(claim, Claim)
        await store.complete(claim, answer)
        assert await store.begin("checkout", "opaque", BODY) == Replay(answer)

    on_a_fresh_vault(scenario)


CUSTOMERS = st.sampled_from([None, "cus-a", "cus-b", "cus-ä ü", "cus-4242"])


@settings(max_examples=25, deadline=None)
@given(
    owners=st.lists(CUSTOMERS, min_size=1, max_size=6),
    erased=CUSTOMERS.filter(lambda c: c is not None),
)
def test_erasure_removes_exactly_the_customers_keys(owners: list[str | None], erased: str) -> None:
    """Whatever keys name whichever customers, erasing one customer makes exactly its keys
    refuse (with any body) and leaves every other key replaying its own answer."""

    async def scenario(vault: Vault) -> None:
        store = IdempotencyStore(vault)
        for i, owner in enumerate(owners):
            claim = await store.begin("c", f"k{i}", BODY, customer_ref=owner)
            assert isinstance(claim, Claim)
            await store.complete(claim, f'{{"i": {i}}}'.encode())
        erasure = await vault.erase_customer(erased)
        mine = [i for i, owner in enumerate(owners) if owner == erased]
        assert erasure.idempotency_keys == len(mine)
        expected = ErasureStatus.ERASED if mine else ErasureStatus.NOT_FOUND
        assert erasure.status == expected
        for i, owner in enumerate(owners):
            if owner == erased:
                with pytest.raises(IdempotencyErased):
                    await store.begin("c", f"k{i}", BODY + b"x", customer_ref=owner)
            else:
                answer = await store.begin("c", f"k{i}", BODY, customer_ref=owner)
                assert answer == Replay(f'{{"i": {i}}}'.encode())

    on_a_fresh_vault(scenario)
