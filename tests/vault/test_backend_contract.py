"""The storage backend contract, checked on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest

from vault import DuplicateRecord, Vault
from vault.backends.base import DekRow, RecordRow


def dek(dek_id: str, customer_idx: str | None = None) -> DekRow:
    """A wrapped-key row (the bytes are opaque to the backend)."""
    return DekRow(dek_id, customer_idx, 1, b"\x00wrapped\xff", "2026-01-01T00:00:00.000000Z")


def row(token: str, dek_id: str, customer_idx: str | None = None) -> RecordRow:
    """A record row (the ciphertext is opaque to the backend)."""
    return RecordRow(
        token=token,
        kind="card",
        dek_id=dek_id,
        ciphertext=b"\x01sealed\x00\xfe",
        customer_idx=customer_idx,
        fingerprint_idx="fpidx",
        created_at="2026-01-01T00:00:00.000000Z",
    )


async def test_rows_round_trip_byte_for_byte(vault: Vault) -> None:
    """What a backend stores it returns unchanged: bytes, NULLs and text."""
    backend = vault.backend
    await backend.insert(row("vtok_card_a", "dek_a", "cust"), dek("dek_a", "cust"))
    assert await backend.get_record("vtok_card_a") == row("vtok_card_a", "dek_a", "cust")
    assert await backend.get_dek("dek_a") == dek("dek_a", "cust")
    assert await backend.get_customer_dek("cust") == dek("dek_a", "cust")
    assert await backend.get_record("vtok_card_missing") is None
    assert await backend.get_dek("dek_missing") is None
    assert await backend.get_customer_dek("nobody") is None


async def test_duplicate_token_is_duplicate_record_and_changes_nothing(vault: Vault) -> None:
    """An existing token raises DuplicateRecord, keeps the first row and stores no new key."""
    backend = vault.backend
    await backend.insert(row("vtok_card_dup", "dek_1"), dek("dek_1"))
    with pytest.raises(DuplicateRecord):
        await backend.insert(row("vtok_card_dup", "dek_2"), dek("dek_2"))
    assert await backend.get_dek("dek_2") is None
    assert (await backend.get_record("vtok_card_dup")) == row("vtok_card_dup", "dek_1")


async def test_second_key_for_a_customer_is_duplicate_record(vault: Vault) -> None:
    """A second data key for the same customer is refused atomically with its record."""
    backend = vault.backend
    await backend.insert(row("vtok_card_c1", "dek_c1", "cust"), dek("dek_c1", "cust"))
    with pytest.raises(DuplicateRecord):
        await backend.insert(row("vtok_card_c2", "dek_c2", "cust"), dek("dek_c2", "cust"))
    assert await backend.get_record("vtok_card_c2") is None
    assert await backend.get_dek("dek_c2") is None
    # Under the existing key, the same record goes in.
    await backend.insert(row("vtok_card_c2", "dek_c1", "cust"), None)
    assert (await backend.get_record("vtok_card_c2")) == row("vtok_card_c2", "dek_c1", "cust")


async def test_record_must_name_an_existing_key(vault: Vault) -> None:
    """A record naming no stored data key is refused as a conflict (the vault retries)."""
    backend = vault.backend
    with pytest.raises(DuplicateRecord):
        await backend.insert(row("vtok_card_orphan", "dek_none"), None)
    assert await backend.get_record("vtok_card_orphan") is None


async def test_delete_reports_whether_the_row_existed(vault: Vault) -> None:
    """delete_record is True once, then False; a shared customer key survives."""
    backend = vault.backend
    await backend.insert(row("vtok_card_d1", "dek_d", "cd"), dek("dek_d", "cd"))
    await backend.insert(row("vtok_card_d2", "dek_d", "cd"), None)
    assert await backend.delete_record("vtok_card_d1") is True
    assert await backend.delete_record("vtok_card_d1") is False
    assert await backend.get_dek("dek_d") is not None
    assert await backend.get_record("vtok_card_d2") is not None


async def test_ping_answers_and_backend_is_healthy(vault: Vault) -> None:
    """A reachable database answers ping and the backend reports healthy."""
    await vault.ping()
    assert vault.healthy is True
