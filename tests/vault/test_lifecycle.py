"""The vault's data lifecycle: crypto-shredding, partner customers, listing, last use, retention."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.backends import RawRows, drop_schema
from vault import (
    DecryptionFailed,
    ErasureStatus,
    Kind,
    LocalKekProvider,
    NewRecord,
    RecordNotFound,
    RetentionPolicy,
    Vault,
    VaultError,
    iso,
    open_backend,
    token_kind,
    utcnow,
)
from vault.crypto import Sealer, record_aad
from vault.keys.ring import KeyRing, init_keyring, retire_key, rotate_keyring
from vault.lifecycle import decode_cursor, encode_cursor
from vault.rotation import rewrap, rewrap_remaining


def card(customer: str | None, ref: str = "pm_lifecycle1") -> NewRecord:
    """A card record as the proxy stores it."""
    return NewRecord(
        kind=Kind.CARD,
        partner="stripe",
        partner_reference=ref,
        details={"brand": "visa", "last4": "4242", "masked": "424242******4242"},
        customer_ref=customer,
        fingerprint="fp_1",
    )


def invoice(customer: str) -> NewRecord:
    """An invoice record as the proxy stores it."""
    return NewRecord(
        kind=Kind.INVOICE,
        partner=None,
        partner_reference=None,
        details={"invoice_number": "F-1", "amount": 100, "currency": "SEK"},
        customer_ref=customer,
    )


async def test_erasure_shreds_key_and_precopied_ciphertext_is_unreadable(
    vault: Vault, raw_rows: RawRows, keyring_path: Path
) -> None:
    """After erase_customer, ciphertext from a pre-erasure copy opens with no key in the ring."""
    stored = [await vault.put(card("cus-shred", f"pm_shred{i}")) for i in range(3)]
    stored.append(await vault.put(invoice("cus-shred")))
    await vault.put_partner_customer("cus-shred", "stripe", "cus_partner1")
    other = await vault.put(card("cus-other"))
    # What a backup taken now holds of the customer: their rows and their wrapped key.
    rows = await raw_rows.query(
        "SELECT token, kind, dek_id, ciphertext FROM records WHERE token IN (?, ?, ?, ?)",
        tuple(r.token for r in stored),
    )
    ((wrapped,),) = await raw_rows.query("SELECT wrapped FROM deks WHERE dek_id = ?", (rows[0][2],))

    erasure = await vault.erase_customer("cus-shred")

    assert erasure.complete
    assert erasure.deleted == {"card": 3, "invoice": 1}
    for record in stored:
        with pytest.raises(RecordNotFound):
            await vault.get(record.token)
    assert await vault.get_partner_customer("cus-shred") is None
    assert await vault.get(other.token) == other

    assert len(rows) == 4
    ring = KeyRing.load(keyring_path)
    for token, kind, dek_id, ciphertext in rows:
        # The key ring's KEKs never sealed records directly ...
        for info in ring.versions():
            with pytest.raises(DecryptionFailed):
                Sealer(ring.kek(info.version)).open(ciphertext, record_aad(token, kind, dek_id))
        # ... and restoring the row into the live vault finds its data key gone.
        # (The key row is gone, so the foreign key must not be checked for this insert.)
        await raw_rows.insert_orphan_record(token, kind, dek_id, ciphertext, iso(utcnow()))
        with pytest.raises(DecryptionFailed):
            await vault.get(token)
    # SQLite: the wrapped key is physically gone from our files (secure_delete +
    # checkpoint). PostgreSQL: gone from every row; its dead tuple waits for VACUUM,
    # which is why shredding relies on retiring the KEK version (test below).
    assert wrapped not in await raw_rows.stored_bytes()


async def test_backup_copy_dies_with_the_kek_version_that_wrapped_its_key(
    vault_url: str, raw_rows: RawRows, keyring_path: Path, tmp_path: Path
) -> None:
    """A pre-erasure copy still holds the wrapped DEK; after rotate, rewrap and retiring
    the old KEK version it decrypts nothing of the erased customer, while the live vault
    keeps serving everyone else (this is what makes crypto-shredding reach backups).
    On PostgreSQL the copy is another schema, as a pg_dump restored elsewhere would be."""
    vault = await Vault.open(vault_url, LocalKekProvider.from_file(keyring_path))
    record = await vault.put(card("cus-backup"))
    survivor = await vault.put(card("cus-survivor", "pm_survivor"))
    copy_url, copy_schema = await raw_rows.backup_copy(tmp_path / "backup.db")
    try:
        await vault.erase_customer("cus-backup")
        await vault.close()

        old = await Vault.open(copy_url, LocalKekProvider.from_file(keyring_path))
        try:
            # Honest limit: with the KEK that wrapped it still in the ring, the copy opens.
            assert (await old.get(record.token)).partner_reference == "pm_lifecycle1"
        finally:
            await old.close()

        rotate_keyring(keyring_path)
        vault = await Vault.open(vault_url, LocalKekProvider.from_file(keyring_path))
        try:
            progress = await rewrap(vault)
            assert progress.failed == 0
            assert await rewrap_remaining(vault) == 0
        finally:
            await vault.close()
        retire_key(keyring_path, 1, in_use=0)

        vault = await Vault.open(vault_url, LocalKekProvider.from_file(keyring_path))
        try:
            assert (await vault.get(survivor.token)).partner_reference == "pm_survivor"
        finally:
            await vault.close()
        old = await Vault.open(copy_url, LocalKekProvider.from_file(keyring_path))
        try:
            with pytest.raises(VaultError):
                await old.get(record.token)
            # The survivor's copy in the backup is gone too: the whole copy predates the
            # rewrap, so a backup is only as readable as the KEK versions still held.
            with pytest.raises(VaultError):
                await old.get(survivor.token)
        finally:
            await old.close()
    finally:
        if copy_schema is not None:
            drop_schema(copy_schema)


async def test_erasure_keeps_what_it_is_told_and_the_key_they_need(vault: Vault) -> None:
    """Kept records (partner detach failed) stay readable; a second erasure finishes the job."""
    a = await vault.put(card("cus-keep", "pm_keep1"))
    b = await vault.put(card("cus-keep", "pm_keep2"))
    await vault.put_partner_customer("cus-keep", "stripe", "cus_keep")
    first = await vault.erase_customer("cus-keep", keep=[b.token], keep_partner_customer=True)
    assert not first.complete
    assert first.remaining == [b.token]
    assert first.partner_customer_remaining
    assert not first.key_shredded
    with pytest.raises(RecordNotFound):
        await vault.get(a.token)
    assert (await vault.get(b.token)).partner_reference == "pm_keep2"
    assert (await vault.get_partner_customer("cus-keep")) is not None

    second = await vault.erase_customer("cus-keep")
    assert second.complete
    assert second.deleted == {"card": 1}
    again = await vault.erase_customer("cus-keep")
    assert again.complete
    assert again.deleted == {}


async def test_concurrent_first_use_stores_one_partner_customer(vault: Vault) -> None:
    """Two racing first uses with different partner ids end with one mapping, the winner's."""
    results = await asyncio.gather(
        vault.put_partner_customer("cus-race", "stripe", "cus_one"),
        vault.put_partner_customer("cus-race", "stripe", "cus_two"),
    )
    assert results[0].reference == results[1].reference
    stored = await vault.get_partner_customer("cus-race")
    assert stored is not None
    assert stored.reference == results[0].reference


async def test_partner_customer_is_sealed_under_the_customer_key(
    vault: Vault, raw_rows: RawRows
) -> None:
    """The partner customer id is not readable in storage, and a row moved between
    customers does not open."""
    await vault.put_partner_customer("cus-seal-a", "stripe", "cus_sealedA")
    await vault.put_partner_customer("cus-seal-b", "stripe", "cus_sealedB")
    await vault.backend.checkpoint()
    assert b"cus_sealed" not in await raw_rows.stored_bytes()
    ((blob,),) = await raw_rows.query(
        "SELECT ciphertext FROM customers WHERE customer_idx = ?",
        (vault.index("customer", "cus-seal-a"),),
    )
    await raw_rows.query(
        "UPDATE customers SET ciphertext = ? WHERE customer_idx = ?",
        (blob, vault.index("customer", "cus-seal-b")),
    )
    with pytest.raises(DecryptionFailed):
        await vault.get_partner_customer("cus-seal-b")


async def test_drop_customer_if_empty_only_drops_unused(vault: Vault) -> None:
    """A first use that stored nothing is undone; a customer with records is left alone."""
    await vault.put_partner_customer("cus-empty", "stripe", "cus_empty")
    assert await vault.drop_customer_if_empty("cus-empty")
    assert await vault.get_partner_customer("cus-empty") is None
    assert await vault.backend.get_customer_dek(vault.index("customer", "cus-empty")) is None
    await vault.put(card("cus-used"))
    await vault.put_partner_customer("cus-used", "stripe", "cus_used")
    assert not await vault.drop_customer_if_empty("cus-used")
    assert await vault.get_partner_customer("cus-used") is not None


async def test_listing_pages_through_every_record_once(vault: Vault) -> None:
    """Pages of 3 over 8 records return each once, oldest first, then stop."""
    made = [await vault.put(card("cus-list", f"pm_list{i}")) for i in range(8)]
    await vault.put(card("cus-elsewhere"))
    seen = []
    cursor = None
    pages = 0
    while True:
        page = await vault.list_customer("cus-list", limit=3, starting_after=cursor)
        pages += 1
        seen += [r.token for r in page.records]
        if not page.has_more:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert seen == [r.token for r in sorted(made, key=lambda r: (r.created_at, r.token))]


_PAGE_QUERY = (
    "SELECT token FROM records WHERE customer_idx = ?"
    " AND (created_at, token) > (?, ?) AND NOT (kind = ? AND created_at < ?)"
    " ORDER BY created_at, token LIMIT 21"
)
_PAGE_ARGS = ("x", "2020", "vtok", "invoice", "2020")


async def test_listing_is_one_indexed_query(
    vault: Vault, backend_name: str, vault_url: str
) -> None:
    """The page query searches records_customer in order rather than scanning and sorting."""
    if backend_name == "sqlite":
        db = vault.backend._reader  # type: ignore[attr-defined]
        plan = db.execute("EXPLAIN QUERY PLAN " + _PAGE_QUERY, _PAGE_ARGS).fetchall()
        detail = " ".join(str(row[-1]) for row in plan)
        assert "USING INDEX records_customer" in detail
        assert "TEMP B-TREE" not in detail
        return
    for i in range(200):
        await vault.put(card(f"cus-plan{i % 20}", f"pm_plan{i}"))
    conn = await asyncpg.connect(vault_url)
    try:
        await conn.execute("ANALYZE records")
        # A table this small is cheaper to scan than any index: ask for the plan the
        # planner picks once scanning is the expensive choice it is in production.
        await conn.execute("SET enable_seqscan = off")
        n = iter(range(1, 6))
        sql = "".join(f"${next(n)}" if c == "?" else c for c in _PAGE_QUERY)
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *_PAGE_ARGS))
    finally:
        await conn.close()
    assert "Index Scan using records_customer" in plan
    assert "Sort" not in plan


@given(
    created=st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.just(UTC),
    ),
    body=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"),
)
def test_cursor_round_trips(created: object, body: str) -> None:
    """Any cursor we make decodes to the same position."""
    from vault.backends.base import RecordRow

    token = "vtok_card_" + (body * 32)[:32].ljust(32, "A")
    row = RecordRow(token, "card", "dek", b"", None, None, iso(created))  # type: ignore[arg-type]
    assert decode_cursor(encode_cursor(row)) == (row.created_at, token)


@given(st.text(max_size=200))
def test_foreign_cursors_are_refused(text: str) -> None:
    """Arbitrary text is a ValueError, never another exception; what decodes is well formed."""
    try:
        created_at, token = decode_cursor(text)
    except ValueError:
        return
    assert token_kind(token) is not None
    assert len(created_at) == len("2026-01-01T00:00:00.000000Z")


async def age(
    raw_rows: RawRows, token: str, *, created_days: int, used_days: int | None = None
) -> None:
    """Move a record's timestamps into the past, as time would."""
    now = utcnow()
    used = iso(now - timedelta(days=used_days)) if used_days is not None else None
    await raw_rows.query(
        "UPDATE records SET created_at = ?, last_used_at = ? WHERE token = ?",
        (iso(now - timedelta(days=created_days)), used, token),
    )


async def test_retention_expiry_and_purge(
    vault_url: str, raw_rows: RawRows, keyring_path: Path
) -> None:
    """Expired records read as missing before the sweep; dry run counts; purge deletes only them."""
    policy = RetentionPolicy(card_days=30, invoice_days=365)
    vault = await Vault.open(vault_url, LocalKekProvider.from_file(keyring_path), retention=policy)
    try:
        stale = await vault.put(card("cus-ret", "pm_stale"))
        used = await vault.put(card("cus-ret", "pm_used"))
        fresh = await vault.put(card(None, "pm_fresh"))
        old_invoice = await vault.put(invoice("cus-ret"))
        new_invoice = await vault.put(invoice("cus-ret"))
        await age(raw_rows, stale.token, created_days=40)
        await age(raw_rows, used.token, created_days=400, used_days=5)
        await age(raw_rows, old_invoice.token, created_days=400)
        await age(raw_rows, new_invoice.token, created_days=300)

        for gone in (stale, old_invoice):
            with pytest.raises(RecordNotFound):
                await vault.get(gone.token)
        assert (await vault.get(stale.token, include_expired=True)).token == stale.token
        listed = await vault.list_customer("cus-ret")
        assert {r.token for r in listed.records} == {used.token, new_invoice.token}

        counts = (await vault.purge_expired(dry_run=True)).deleted
        assert counts == {"card": 1, "invoice": 1}
        assert (await vault.get(stale.token, include_expired=True)).token == stale.token

        counts = (await vault.purge_expired()).deleted
        assert counts == {"card": 1, "invoice": 1}
        for gone in (stale, old_invoice):
            with pytest.raises(RecordNotFound):
                await vault.get(gone.token, include_expired=True)
        for kept in (used, fresh, new_invoice):
            assert (await vault.get(kept.token)).token == kept.token
        assert (await vault.purge_expired()).deleted == {"card": 0, "invoice": 0}
    finally:
        await vault.close()


async def test_purge_counts_the_payment_methods_it_leaves_attached(
    vault_url: str, raw_rows: RawRows, keyring_path: Path
) -> None:
    """Purged card and bank records saved on a customer are counted as still attached at
    the partner, apart from the per-kind counts; unsaved cards and invoices are not."""
    policy = RetentionPolicy(card_days=30, bank_days=30, invoice_days=365)
    vault = await Vault.open(vault_url, LocalKekProvider.from_file(keyring_path), retention=policy)
    try:
        bank = NewRecord(
            kind=Kind.BANK,
            partner="stripe",
            partner_reference="pm_bank_saved",
            details={"last4": "3000"},
            customer_ref="cus-att",
        )
        expired = [
            await vault.put(card("cus-att", "pm_saved1")),
            await vault.put(card("cus-att-2", "pm_saved2")),
            await vault.put(card(None, "pm_single_use")),
            await vault.put(bank),
            await vault.put(invoice("cus-att")),
        ]
        kept = await vault.put(card("cus-att", "pm_saved_fresh"))
        for record in expired:
            await age(raw_rows, record.token, created_days=400)
        deleted = {"card": 3, "bank": 1, "invoice": 1}

        preview = await vault.purge_expired(dry_run=True)
        assert (preview.deleted, preview.still_attached) == (deleted, 3)
        assert await raw_rows.count("records") == 6

        # One record per batch: the counts add up across batches.
        purged = await vault.purge_expired(batch=1)
        assert (purged.deleted, purged.still_attached) == (deleted, 3)
        assert [token for (token,) in await raw_rows.query("SELECT token FROM records")] == [
            kept.token
        ]
        again = await vault.purge_expired()
        assert again.still_attached == 0
        assert set(again.deleted.values()) == {0}
    finally:
        await vault.close()


async def test_last_use_is_batched_and_throttled(vault: Vault, raw_rows: RawRows) -> None:
    """Marks wait in memory, land in one flush, and a recently used token is not re-marked."""
    a = await vault.put(card(None, "pm_use_a"))
    b = await vault.put(card(None, "pm_use_b"))
    for _ in range(5):
        vault.mark_used(await vault.get(a.token))
    vault.mark_used(await vault.get(b.token))
    assert await raw_rows.count("records", "last_used_at IS NOT NULL") == 0
    assert await vault.flush_usage() == 2
    assert await raw_rows.count("records", "last_used_at IS NOT NULL") == 2
    used = await raw_rows.column_by_token("last_used_at")
    # A flush never moves a mark backwards (an older time for the same token is ignored).
    assert await vault.backend.touch({a.token: "2000-01-01T00:00:00.000000Z"}) == 0
    assert (await raw_rows.column_by_token("last_used_at"))[a.token] == used[a.token]
    vault.mark_used(await vault.get(a.token))
    assert vault.pending_use(a.token) is None
    assert await vault.flush_usage() == 0


async def test_pending_use_keeps_a_token_alive(
    vault_url: str, raw_rows: RawRows, keyring_path: Path
) -> None:
    """A token used since the last flush is neither expired on read nor purged."""
    vault = await Vault.open(
        vault_url,
        LocalKekProvider.from_file(keyring_path),
        retention=RetentionPolicy(card_days=30),
    )
    try:
        record = await vault.put(card(None, "pm_alive"))
        vault.mark_used(await vault.get(record.token))
        await age(raw_rows, record.token, created_days=40)
        assert (await vault.get(record.token)).token == record.token
        assert (await vault.purge_expired()).deleted == {"card": 0}
    finally:
        await vault.close()


def test_retention_policy_rules() -> None:
    """Zero keeps forever; last use counts for cards, creation for invoices; no negatives."""
    now = utcnow()
    policy = RetentionPolicy(card_days=10, invoice_days=10)
    old = now - timedelta(days=11)
    assert policy.expired(Kind.CARD, old, None, now)
    assert not policy.expired(Kind.CARD, old, now - timedelta(days=1), now)
    assert policy.expired(Kind.INVOICE, old, now, now)
    assert not policy.expired(Kind.BANK, old - timedelta(days=9999), None, now)
    assert not RetentionPolicy().active
    with pytest.raises(ValueError, match="negative"):
        RetentionPolicy(card_days=-1)


async def test_erasure_reports_only_what_it_saw(vault: Vault) -> None:
    """A customer never held is not_found (no key claimed shredded); a repeat of a real
    erasure is already_erased; a customer held again after an erasure is erased again."""
    never = await vault.erase_customer("cus-never")
    assert never.status == ErasureStatus.NOT_FOUND
    assert not never.key_shredded
    assert never.deleted == {}

    await vault.put(card("cus-twice"))
    first = await vault.erase_customer("cus-twice")
    assert first.status == ErasureStatus.ERASED
    assert first.key_shredded
    again = await vault.erase_customer("cus-twice")
    assert again.status == ErasureStatus.ALREADY_ERASED
    assert again.key_shredded
    assert again.deleted == {}
    await vault.put(card("cus-twice", "pm_back"))
    back = await vault.erase_customer("cus-twice")
    assert back.status == ErasureStatus.ERASED
    assert back.deleted == {"card": 1}


async def test_erasure_under_a_foreign_index_key_is_not_found_and_keeps_the_data(
    vault_url: str, vault: Vault, tmp_path: Path
) -> None:
    """With a key ring whose index key is not the vault's, the customer's rows are invisible:
    erasure says not_found (never erased, never key_shredded) and the data stays intact.
    (Built past any start-up check of the ring: erasure must be honest on its own.)"""
    record = await vault.put(card("cus-foreign"))
    other_ring = tmp_path / "other" / "keyring.json"
    init_keyring(other_ring)
    stranger = Vault(open_backend(vault_url), LocalKekProvider.from_file(other_ring))
    try:
        erasure = await stranger.erase_customer("cus-foreign")
    finally:
        await stranger.close()
    assert erasure.status == ErasureStatus.NOT_FOUND
    assert not erasure.key_shredded
    assert await vault.get(record.token) == record


async def test_last_use_flush_writes_small_transactions(
    vault: Vault, raw_rows: RawRows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big backlog of marks goes out USAGE_BATCH per transaction, all of it, in order."""
    monkeypatch.setattr("vault.lifecycle.USAGE_BATCH", 2)
    records = [await vault.put(card(None, f"pm_batch_{i}")) for i in range(5)]
    for record in records:
        vault.mark_used(await vault.get(record.token))
    sizes: list[int] = []
    touch = vault.backend.touch

    async def counted(used: dict[str, str]) -> int:
        sizes.append(len(used))
        return await touch(used)

    monkeypatch.setattr(vault.backend, "touch", counted)
    assert await vault.flush_usage() == 5
    assert sizes == [2, 2, 1]
    assert await raw_rows.count("records", "last_used_at IS NOT NULL") == 5


async def test_last_use_marks_a_failed_batch_left_are_kept(
    vault: Vault, raw_rows: RawRows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one batch fails, the marks it and later batches held wait for the next flush."""
    monkeypatch.setattr("vault.lifecycle.USAGE_BATCH", 2)
    records = [await vault.put(card(None, f"pm_fail_{i}")) for i in range(5)]
    for record in records:
        vault.mark_used(await vault.get(record.token))
    touch = vault.backend.touch
    calls = 0

    async def second_fails(used: dict[str, str]) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise VaultError("write failed")
        return await touch(used)

    monkeypatch.setattr(vault.backend, "touch", second_fails)
    with pytest.raises(VaultError):
        await vault.flush_usage()
    assert await raw_rows.count("records", "last_used_at IS NOT NULL") == 2
    assert all(vault.pending_use(r.token) is not None for r in records[2:])
    monkeypatch.setattr(vault.backend, "touch", touch)
    assert await vault.flush_usage() == 3
    assert await raw_rows.count("records", "last_used_at IS NOT NULL") == 5
