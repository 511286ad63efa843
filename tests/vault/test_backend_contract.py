"""The storage backend contract, checked on SQLite and PostgreSQL alike."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest

import vault as vault_package
from vault import DuplicateRecord, Vault
from vault.backends.base import (
    Backend,
    DekRow,
    IdempotencyRow,
    Link,
    RecordRow,
    erased_idempotency_row,
)
from vault.backends.postgres import PostgresBackend
from vault.backends.sqlite import SqliteBackend
from vault.backends.sync_rows import OutboxRow
from vault.migrations import Statement, drive, migration_scripts, runner


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


async def test_record_and_its_key_come_back_from_one_read(vault: Vault) -> None:
    """get_record_and_dek returns the record row and the data key it names, byte for byte."""
    backend = vault.backend
    await backend.insert(row("vtok_card_j1", "dek_j", "cust"), dek("dek_j", "cust"))
    await backend.insert(row("vtok_card_j2", "dek_j", "cust"), None)
    for token in ("vtok_card_j1", "vtok_card_j2"):
        assert await backend.get_record_and_dek(token) == (
            row(token, "dek_j", "cust"),
            dek("dek_j", "cust"),
        )
    assert await backend.get_record_and_dek("vtok_card_missing") is None


async def test_only_the_networked_backend_folds_the_data_key_into_reads(vault: Vault) -> None:
    """SQLite reads inline (the record alone is cheaper); PostgreSQL saves a round trip."""
    assert vault.backend.inline_reads is (vault.backend.name == "sqlite")


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


def protocol_methods() -> dict[str, inspect.Signature]:
    """Every method the Backend protocol declares, with its signature."""
    return {
        name: inspect.signature(member)
        for name, member in vars(Backend).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


def _shape(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    """Parameter names, kinds and defaults: what a caller relies on."""
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize("backend_class", [SqliteBackend, PostgresBackend], ids=["sqlite", "pg"])
def test_each_backend_implements_the_whole_protocol(backend_class: type) -> None:
    """Every protocol method exists on both backends, callable the same way."""
    for name, signature in protocol_methods().items():
        implemented = getattr(backend_class, name, None)
        assert implemented is not None, name
        assert _shape(inspect.signature(implemented)) == _shape(signature), name


def test_the_protocol_covers_every_backend_call_of_the_vault() -> None:
    """Whatever the vault calls on ``….backend`` is declared in the one protocol."""
    declared = set(protocol_methods()) | {"name", "healthy", "inline_reads"}
    called: set[str] = set()
    for path in Path(vault_package.__file__).parent.rglob("*.py"):
        if "backends" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "backend"
            ):
                called.add(node.attr)
    assert called
    assert called <= declared, called - declared


async def test_idempotency_rows_follow_the_contract(vault: Vault) -> None:
    """Insert-unless-live, compare-and-set takeover, owner-only updates, the end of the
    flight, tombstones and purge behave alike on both backends."""
    backend = vault.backend
    row = IdempotencyRow(
        key_idx="k1",
        request_mac="mac",
        state="in_flight",
        owner="host/1/a",
        kek_version=1,
        wrapped_dek=b"\x00dek\xff",
        partner_result=None,
        response=None,
        created_at="2026-01-01T00:00:00.000000Z",
        updated_at="2026-01-01T00:00:00.000000Z",
        expires_at="2026-01-02T00:00:00.000000Z",
        customer_idx="cust",
    )
    assert await backend.idempotency_insert(row) is None
    assert await backend.idempotency_insert(row) == row
    assert await backend.idempotency_get("k1") == row
    later = "2026-01-01T00:01:00.000000Z"
    # A takeover must name what it read: a stale read loses, an exact one wins.
    assert not await backend.idempotency_claim(
        "k1", owner_was="host/9/z", updated_was=row.updated_at, owner="host/2/b", now=later
    )
    assert await backend.idempotency_claim(
        "k1", owner_was="host/1/a", updated_was=row.updated_at, owner="host/2/b", now=later
    )
    assert not await backend.idempotency_update(
        "k1", owner="host/1/a", now=later, partner_result=b"p"
    )
    assert await backend.idempotency_update("k1", owner="host/2/b", now=later, partner_result=b"p")
    assert await backend.idempotency_update("k1", owner="host/2/b", now=later, response=b"\x00r")
    done = await backend.idempotency_get("k1")
    assert done is not None
    assert (done.state, done.owner, done.partner_result, done.response) == (
        "done",
        None,
        b"p",
        b"\x00r",
    )
    # A finished row is nobody's to write any more.
    assert not await backend.idempotency_update("k1", owner="host/2/b", now=later, release=True)
    erased = await backend.erase_customer("cust", keep=(), keep_customer=False, now=later)
    assert erased.idempotency_deleted == 1
    assert await backend.idempotency_tombstoned("k1", later)
    blocked = await backend.idempotency_insert(row)
    assert blocked == erased_idempotency_row("k1", row.expires_at)
    assert await backend.idempotency_purge("2026-01-03T00:00:00.000000Z") == 0
    assert not await backend.idempotency_tombstoned("k1", later)
    assert await backend.idempotency_insert(row) is None
    assert await backend.idempotency_purge("2026-01-03T00:00:00.000000Z") == 1


def test_one_migration_runner_applies_only_what_is_missing() -> None:
    """Both dialects ship the same versions, and the runner applies exactly the ones a
    schema lacks, in order, recording each."""
    sqlite = [m.version for m in migration_scripts("sqlite")]
    assert sqlite == [m.version for m in migration_scripts("postgres")]
    for applied in ([], sqlite[:3], sqlite):
        steps: list[Statement] = []

        def execute(
            step: Statement, applied: list[int] = applied, steps: list[Statement] = steps
        ) -> list[Any]:
            steps.append(step)
            return [(v,) for v in applied] if step.sql.startswith("SELECT version") else []

        assert drive(runner("sqlite"), execute) == sqlite[-1]
        scripts = [s for s in steps if s.script]
        recorded = [s.args[0] for s in steps if s.sql.startswith("INSERT INTO schema_migrations")]
        assert len(scripts) == len(recorded) == len(sqlite) - len(applied)
        assert recorded == sqlite[len(applied) :]


def outbox(partner_key: str, token: str) -> OutboxRow:
    """An outbox row written before a partner call."""
    return OutboxRow(partner_key, "stripe", "card", token, None, "2026-01-01T00:00:00.000000Z")


async def outbox_keys(backend: Any) -> list[str]:
    """The partner keys of every outbox row."""
    rows = await backend.sync_outbox_page(before="9999", after="", limit=100)
    return [r.partner_key for r in rows]


@pytest.mark.parametrize("with_dek", [True, False], ids=["new-dek", "shared-dek"])
async def test_insert_links_and_settles_in_the_same_write(vault: Vault, with_dek: bool) -> None:
    """A record inserted with its link is findable by both blind indexes, and its outbox
    row is gone, while another request's row stays."""
    backend: Any = vault.backend
    if not with_dek:
        await backend.insert(row("vtok_card_first", "dek_s", "cs"), dek("dek_s", "cs"))
    await backend.sync_outbox_add(outbox("pk-mine", "vtok_card_linked"))
    await backend.sync_outbox_add(outbox("pk-other", "vtok_card_other"))
    await backend.insert(
        row("vtok_card_linked", "dek_s", "cs"),
        dek("dek_s", "cs") if with_dek else None,
        link=Link("vtok_card_linked", "refidx", "custidx"),
        settle_outbox="pk-mine",
    )
    by_ref = await backend.sync_records_by_reference("refidx")
    by_customer = await backend.sync_records_by_partner_customer("custidx")
    assert [r.record.token for r in by_ref] == ["vtok_card_linked"]
    assert [r.record.token for r in by_customer] == ["vtok_card_linked"]
    assert await outbox_keys(backend) == ["pk-other"]
    assert await backend.get_dek("dek_s") == dek("dek_s", "cs")


async def test_failed_linked_insert_keeps_the_outbox_row(vault: Vault) -> None:
    """A linked insert that fails (the token exists) deletes no outbox row and links nothing:
    reconciliation still finds the payment method its partner call made."""
    backend: Any = vault.backend
    await backend.insert(row("vtok_card_taken", "dek_t"), dek("dek_t"))
    await backend.sync_outbox_add(outbox("pk-lost", "vtok_card_taken"))
    with pytest.raises(DuplicateRecord):
        await backend.insert(
            row("vtok_card_taken", "dek_u"),
            dek("dek_u"),
            link=Link("vtok_card_taken", "refidx2", None),
            settle_outbox="pk-lost",
        )
    assert await outbox_keys(backend) == ["pk-lost"]
    assert await backend.sync_records_by_reference("refidx2") == []
    assert await backend.get_dek("dek_u") is None
