"""The vault on its own: sealing, envelope keys, storage, failure modes (on both backends)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.backends import RawRows
from vault import (
    DecryptionFailed,
    KeyRingMismatch,
    Kind,
    LocalKekProvider,
    NewRecord,
    RecordNotFound,
    Vault,
    token_kind,
)
from vault.backends.sqlite import SqliteBackend
from vault.keys.ring import init_keyring


def card_record(customer: str | None = None, ref: str = "pm_test_123") -> NewRecord:
    """A storable card record, as the proxy would build it."""
    return NewRecord(
        kind=Kind.CARD,
        partner="stripe",
        partner_reference=ref,
        details={"brand": "visa", "last4": "4242", "masked": "424242******4242"},
        customer_ref=customer,
        metadata={"order": "A-1"},
        fingerprint="fp_abc",
    )


async def test_put_then_get_round_trips(vault: Vault) -> None:
    """A stored record reads back identical, with a well-formed card token."""
    stored = await vault.put(card_record("cus-1"))
    assert token_kind(stored.token) is Kind.CARD
    got = await vault.get(stored.token)
    assert got == stored


async def test_tokens_are_random_and_long(vault: Vault) -> None:
    """Two records of the same data get unrelated tokens with 32 random characters."""
    a = await vault.put(card_record())
    b = await vault.put(card_record())
    assert a.token != b.token
    assert len(a.token.removeprefix("vtok_card_")) == 32


async def test_unknown_and_malformed_tokens_not_found(vault: Vault) -> None:
    """An unknown well-formed token and a malformed one both raise RecordNotFound."""
    with pytest.raises(RecordNotFound):
        await vault.get("vtok_card_" + "B" * 32)
    with pytest.raises(RecordNotFound):
        await vault.get("vtok_card_../../etc")


async def test_customer_records_share_one_data_key(vault: Vault, raw_rows: RawRows) -> None:
    """Records of one customer use the customer's DEK; records without a customer get their own."""
    a = await vault.put(card_record("cus-9"))
    b = await vault.put(card_record("cus-9"))
    c = await vault.put(card_record(None))
    d = await vault.put(card_record(None))
    dek = await raw_rows.column_by_token("dek_id")
    assert dek[a.token] == dek[b.token]
    assert len({dek[a.token], dek[c.token], dek[d.token]}) == 3
    assert await raw_rows.count("deks", "customer_idx IS NOT NULL") == 1


async def test_concurrent_first_writes_for_a_customer_create_one_key(
    vault: Vault, raw_rows: RawRows
) -> None:
    """Fifty concurrent puts for a new customer end with one DEK and fifty readable records."""
    stored = await asyncio.gather(*(vault.put(card_record("cus-race")) for _ in range(50)))
    assert await raw_rows.count("deks") == 1
    for record in stored:
        assert (await vault.get(record.token)).customer_ref == "cus-race"


async def test_group_commit_is_durable_across_reopen(vault_url: str, keyring_path: Path) -> None:
    """Hundreds of concurrent puts are all readable after the vault is closed and reopened."""
    keys = LocalKekProvider.from_file(keyring_path)
    v = await Vault.open(vault_url, keys)
    stored = await asyncio.gather(*(v.put(card_record(ref=f"pm_{i}")) for i in range(300)))
    await v.close()
    v = await Vault.open(vault_url, keys)
    try:
        for i, record in enumerate(stored):
            assert (await v.get(record.token)).partner_reference == f"pm_{i}"
    finally:
        await v.close()


async def test_clear_columns_hold_no_references(vault: Vault, raw_rows: RawRows) -> None:
    """Partner reference, customer ref, metadata and fingerprint are nowhere in the database."""
    await vault.put(card_record("cus-secret-ref", ref="pm_visible_if_leaked"))
    await vault.close()
    data = await raw_rows.stored_bytes()
    assert b"vtok_card_" in data  # the scan sees the stored rows
    for needle in (b"pm_visible_if_leaked", b"cus-secret-ref", b"A-1", b"fp_abc", b"4242"):
        assert needle not in data, needle


async def test_tampered_ciphertext_raises(vault: Vault, raw_rows: RawRows) -> None:
    """Any changed byte of the ciphertext makes get() raise DecryptionFailed."""
    stored = await vault.put(card_record("cus-t"))
    blob = await raw_rows.get(stored.token, "ciphertext")
    for position in (0, 5, len(blob) // 2, len(blob) - 1):
        changed = bytearray(blob)
        changed[position] ^= 0x80
        await raw_rows.set("ciphertext", bytes(changed), token=stored.token)
        with pytest.raises(DecryptionFailed):
            await vault.get(stored.token)


async def test_uncached_data_key_is_opened_from_the_record_read(
    vault: Vault, raw_rows: RawRows
) -> None:
    """A record whose data key left the cache opens; its tampered wrapped key fails closed."""
    stored = await vault.put(card_record())
    dek_id = await raw_rows.get(stored.token, "dek_id")
    vault.forget_dek(dek_id)
    assert (await vault.get(stored.token)).partner_reference == "pm_test_123"
    vault.forget_dek(dek_id)
    (wrapped,) = (await raw_rows.query("SELECT wrapped FROM deks WHERE dek_id = ?", (dek_id,)))[0]
    changed = bytearray(wrapped)
    changed[-1] ^= 0x01
    await raw_rows.query("UPDATE deks SET wrapped = ? WHERE dek_id = ?", (bytes(changed), dek_id))
    with pytest.raises(DecryptionFailed):
        await vault.get(stored.token)


async def test_ciphertext_moved_between_customers_fails(vault: Vault, raw_rows: RawRows) -> None:
    """A ciphertext moved onto another customer's row (with or without its DEK id) fails."""
    a = await vault.put(card_record("cus-a"))
    b = await vault.put(card_record("cus-b"))
    blob = await raw_rows.get(a.token, "ciphertext")
    dek_a = await raw_rows.get(a.token, "dek_id")
    await raw_rows.set("ciphertext", blob, token=b.token)
    with pytest.raises(DecryptionFailed):
        await vault.get(b.token)
    await raw_rows.set("dek_id", dek_a, token=b.token)
    with pytest.raises(DecryptionFailed):
        await vault.get(b.token)


async def test_kind_column_changed_fails(vault: Vault, raw_rows: RawRows) -> None:
    """Relabelling a row's kind does not make it readable under another kind."""
    stored = await vault.put(card_record())
    await raw_rows.set("kind", "bank")
    with pytest.raises(DecryptionFailed):
        await vault.get(stored.token)


async def test_wrong_key_ring_cannot_read(
    vault_url: str, keyring_path: Path, tmp_path: Path
) -> None:
    """Another key ring is refused at open; used behind the check, it fails authentication."""
    v = await Vault.open(vault_url, LocalKekProvider.from_file(keyring_path))
    stored = await v.put(card_record("cus-k"))
    await v.close()
    other = tmp_path / "other" / "keyring.json"
    init_keyring(other)
    with pytest.raises(KeyRingMismatch, match="does not belong to this vault"):
        await Vault.open(vault_url, LocalKekProvider.from_file(other))
    v = await Vault.open(vault_url, LocalKekProvider.from_file(other), check_keys=False)
    try:
        with pytest.raises(DecryptionFailed):
            await v.get(stored.token)
    finally:
        await v.close()


async def test_delete_removes_record_and_its_own_key(vault: Vault, raw_rows: RawRows) -> None:
    """Deleting a customer-less record also deletes its DEK; a second delete reports False."""
    stored = await vault.put(card_record())
    assert await vault.delete(stored.token) is True
    assert await vault.delete(stored.token) is False
    with pytest.raises(RecordNotFound):
        await vault.get(stored.token)
    assert await raw_rows.count("deks") == 0


async def test_delete_keeps_a_customer_key_other_records_use(
    vault: Vault, raw_rows: RawRows
) -> None:
    """Deleting one of a customer's records keeps the customer's DEK and the other record."""
    a = await vault.put(card_record("cus-keep"))
    b = await vault.put(card_record("cus-keep"))
    assert await vault.delete(a.token) is True
    assert await raw_rows.count("deks") == 1
    assert (await vault.get(b.token)).customer_ref == "cus-keep"


async def test_migrations_are_idempotent(vault: Vault) -> None:
    """Running migrate again applies nothing and reports the same version."""
    first = await vault.backend.migrate()
    assert await vault.backend.migrate() == first >= 1


async def test_sqlite_database_uses_wal_and_full_sync(vault_path: Path, keyring_path: Path) -> None:
    """SQLite only: the file is in WAL mode; the writer commits with synchronous=FULL (2)."""
    vault = await Vault.open(f"sqlite:///{vault_path}", LocalKekProvider.from_file(keyring_path))
    try:
        db = sqlite3.connect(vault_path)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        backend = vault.backend
        assert backend._writer.execute("PRAGMA synchronous").fetchone() == (2,)  # type: ignore[attr-defined]
    finally:
        await vault.close()


async def test_record_under_a_version_rotated_by_another_process_is_read(
    vault_url: str, keyring_path: Path
) -> None:
    """A data key under a version another process added is read after one reload, not refused."""
    running = await Vault.open(vault_url, LocalKekProvider.from_file(keyring_path))
    try:
        rotate = (
            "import sys; from vault.keys.ring import rotate_keyring; rotate_keyring(sys.argv[1])"
        )
        done = subprocess.run(  # noqa: ASYNC221 - the other process must finish first
            [sys.executable, "-c", rotate, str(keyring_path)], check=False, timeout=60
        )
        assert done.returncode == 0
        # Another replica, started after the rotation, seals under version 2.
        other = Vault(running.backend, LocalKekProvider.from_file(keyring_path))
        stored = await other.put(card_record("cus-rotated"))
        assert running.keys.active_version == 1  # the running vault has not looked yet
        assert await running.get(stored.token) == stored
        assert running.keys.active_version == 2
    finally:
        await running.close()


async def test_sqlite_writer_waits_for_the_write_lock_but_never_hangs_on_it(
    tmp_path: Path, keyring_path: Path
) -> None:
    """Writers queue on the shared flock; one held past the busy timeout is gone around."""
    path = tmp_path / "locked.db"
    backend = SqliteBackend(path, busy_timeout_ms=300)
    vault = Vault(backend, LocalKekProvider.from_file(keyring_path))
    await backend.migrate()
    holder = os.open(str(path) + ".writelock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        # Another process holds the queue and never lets go: after the busy timeout the
        # write goes to SQLite, which is free, so it still lands.
        stored = await vault.put(card_record("cus-lock"))
        assert await vault.get(stored.token) == stored
        fcntl.flock(holder, fcntl.LOCK_UN)
        many = await asyncio.gather(*(vault.put(card_record()) for _ in range(20)))
        assert len({r.token for r in many}) == 20
    finally:
        os.close(holder)
        await vault.close()


def _size(path: str | Path) -> int:
    """A file's size: a stat, too quick to hand to a thread."""
    return Path(path).stat().st_size


async def _blob_writes(backend: SqliteBackend, count: int, size: int, *, writers: int) -> None:
    """``count`` one-row commits of ``size`` random bytes, from ``writers`` at once."""
    remaining = iter(range(count))

    def insert(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO blobs VALUES (?)", (os.urandom(size),))

    async def writer() -> None:
        for _ in remaining:
            await backend._write(insert, atomic=True)

    await asyncio.gather(*(writer() for _ in range(writers)))


async def test_sqlite_checkpoints_keep_the_wal_small_under_steady_writes(tmp_path: Path) -> None:
    """Checkpoints run off the commit path, yet the WAL restarts under unbroken writes:
    16 MB written, the WAL never past a few MB (SQLite's own checkpoint is switched off)."""
    path = tmp_path / "steady.db"
    backend = SqliteBackend(path)
    try:
        assert backend._writer.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        backend._writer.execute("CREATE TABLE blobs (data BLOB)")
        largest = 0

        async def watch() -> None:
            nonlocal largest
            while True:
                with contextlib.suppress(FileNotFoundError):
                    largest = max(largest, _size(f"{path}-wal"))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        await _blob_writes(backend, 2000, 8192, writers=16)
        watcher.cancel()
        assert largest < 8 * 2**20
        rows = backend._writer.execute("SELECT count(*) FROM blobs").fetchone()
        assert rows == (2000,)
    finally:
        await backend.close()
    assert backend._checkpointer._thread is not None
    assert not backend._checkpointer._thread.is_alive()


async def test_sqlite_commits_of_a_quiet_spell_are_checkpointed(tmp_path: Path) -> None:
    """A few commits after the last round reach the database file within seconds."""
    path = tmp_path / "quiet.db"
    backend = SqliteBackend(path)

    async def file_grows_past(size: int) -> int:
        for _ in range(100):
            if (now := _size(path)) > size:
                return now
            await asyncio.sleep(0.05)
        raise AssertionError("the database file did not grow: no checkpoint ran")

    try:
        backend._writer.execute("CREATE TABLE blobs (data BLOB)")
        empty = _size(path)
        await _blob_writes(backend, 40, 8192, writers=1)
        after_rounds = await file_grows_past(empty + 30 * 8192)
        await _blob_writes(backend, 5, 8192, writers=1)  # fewer than a round's worth
        await file_grows_past(after_rounds + 4 * 8192)
    finally:
        await backend.close()


async def test_sqlite_writer_checkpoints_when_the_checkpoint_thread_cannot_connect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without its own connection the checkpointer hands every round to the writer: the
    WAL still stays small."""
    path = tmp_path / "inline.db"
    backend = SqliteBackend(path)

    def refuse(*args: object, **kwargs: object) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr("vault.backends.sqlite._connect", refuse)
    try:
        backend._writer.execute("CREATE TABLE blobs (data BLOB)")
        await _blob_writes(backend, 1000, 8192, writers=8)
        assert backend._checkpointer._inline
        assert _size(f"{path}-wal") < 4 * 2**20
    finally:
        await backend.close()


async def test_sqlite_erasure_checkpoint_waits_out_another_checkpoint(tmp_path: Path) -> None:
    """The TRUNCATE checkpoint after an erasure is not turned away by a checkpoint another
    connection is running: it waits for it, then empties the WAL."""
    path = tmp_path / "erasure.db"
    backend = SqliteBackend(path)
    try:
        backend._writer.execute("CREATE TABLE blobs (data BLOB)")
        # 32 MB of WAL written behind the backend's back, so copying it takes a while.
        filler = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        filler.execute("PRAGMA wal_autocheckpoint = 0")
        filler.execute("BEGIN")
        for _ in range(4000):
            filler.execute("INSERT INTO blobs VALUES (?)", (os.urandom(8192),))
        filler.execute("COMMIT")
        started = threading.Event()

        def other_checkpoint() -> None:
            started.set()
            filler.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

        other = threading.Thread(target=other_checkpoint)
        other.start()
        started.wait()
        assert await backend.checkpoint()
        other.join()
        filler.close()
        assert _size(f"{path}-wal") == 0
    finally:
        await backend.close()
