"""The tokenproxy command: keys init, clients add, migrate, and fail-closed start-up."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.cli.main import main
from proxy.infra.clients import ClientRegistry
from tests.cards import card_like_run
from vault import IdempotencyStore, Kind, LocalKekProvider, NewRecord, Vault
from vault.keys.ring import init_keyring
from vault.migrations import migration_scripts


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the CLI's settings at files in the test directory."""
    monkeypatch.setenv("TOKENPROXY_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("TOKENPROXY_CLIENTS", str(tmp_path / "clients.json"))
    monkeypatch.setenv("TOKENPROXY_VAULT_URL", f"sqlite:///{tmp_path / 'vault.db'}")
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    return tmp_path


@pytest.fixture
def ring(env: Path) -> Path:
    """The CLI environment with a key ring: admin commands audit into the vault, so need it."""
    assert main(["keys", "init"]) == 0
    return env


def test_keys_init_creates_private_file_and_refuses_overwrite(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keys init writes a 0600 key ring; a second run refuses with one line."""
    assert main(["keys", "init"]) == 0
    mode = stat.S_IMODE((env / "keyring.json").stat().st_mode)
    assert mode == 0o600
    assert main(["keys", "init"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "keyring.json" in err


def test_clients_add_prints_key_once_and_stores_only_digest(
    ring: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """clients add prints a tpk_ key, stores its SHA-256 only, and the key authenticates."""
    assert main(["clients", "add", "billing", "--scopes", "resolve,read"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("tpk_")
    stored = (ring / "clients.json").read_text()
    assert key not in stored
    doc = json.loads(stored)
    assert doc["clients"][0]["scopes"] == ["read", "resolve"]
    client = ClientRegistry.load(ring / "clients.json").authenticate(key)
    assert client is not None
    assert client.name == "billing"
    assert ClientRegistry.load(ring / "clients.json").authenticate(key + "x") is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["clients", "add", "x", "--scopes", "tokenize,superuser"], "scopes"),
        (["clients", "add", "Bad Name!", "--scopes", "read"], "client name"),
        (["clients", "add", "4242424242424242", "--scopes", "read"], "card number"),
        (["clients", "add", "4242-4242-4242-4242", "--scopes", "read"], "card number"),
    ],
)
def test_clients_add_rejects_bad_input(
    ring: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Unknown scopes and bad names (card-number-like ones too) are refused with a clear
    message, and the refusal is audited without the name as typed."""
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    trail = sqlite3.connect(ring / "vault.db").execute("SELECT * FROM audit_events").fetchall()
    assert trail[-1][2] == "client.add"
    assert argv[2] not in str(trail)


@pytest.mark.parametrize("command", ["remove", "rotate"])
def test_a_card_like_name_that_is_no_client_is_refused_and_audited_by_digest(
    ring: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """remove and rotate of a name holding a card-number-like run refuse it in one line and
    record the refusal under the name's ``client:`` digest, as a refused add does."""
    assert main(["clients", "add", "billing", "--scopes", "resolve"]) == 0
    name = "x" + card_like_run()
    assert main(["clients", command, name]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["audit", "digest", "client", name]) == 0
    digest = capsys.readouterr().out.strip()
    trail = sqlite3.connect(ring / "vault.db").execute("SELECT * FROM audit_events").fetchall()
    assert trail[-1][2:4] == (f"client.{command}", "failure")
    assert trail[-1][6] == digest
    assert name[1:] not in str(trail)


def test_a_card_like_certificate_identity_is_audited_by_digest(
    ring: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A client bound to a certificate identity whose digits pass for a card number is
    added and audited, the identity recorded as its ``cert_subject:`` digest."""
    identity = "CN=device" + card_like_run()
    argv = ["clients", "add", "billing", "--scopes", "resolve", "--cert-subject", identity]
    assert main(argv) == 0
    assert main(["audit", "digest", "cert_subject", identity]) == 0
    digest = capsys.readouterr().out.strip().splitlines()[-1]
    trail = sqlite3.connect(ring / "vault.db").execute("SELECT * FROM audit_events").fetchall()
    assert trail[-1][2:4] == ("client.add", "success")
    assert json.loads(trail[-1][7])["cert_subject"] == digest
    assert identity not in str(trail)


def test_duplicate_client_name_refused(ring: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second client with the same name is refused."""
    assert main(["clients", "add", "orders", "--scopes", "read"]) == 0
    assert main(["clients", "add", "orders", "--scopes", "read"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_migrate_reports_schema_version(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """migrate applies the schema and prints the version."""
    assert main(["keys", "init"]) == 0
    assert main(["migrate"]) == 0
    latest = migration_scripts("sqlite")[-1][0]
    assert f"schema at version {latest}\n" in capsys.readouterr().out


def _serve(env_dir: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "TOKENPROXY_KEYRING": str(env_dir / "keyring.json"),
        "TOKENPROXY_CLIENTS": str(env_dir / "clients.json"),
        "TOKENPROXY_VAULT_URL": f"sqlite:///{env_dir / 'vault.db'}",
        "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:9",
        "TOKENPROXY_LISTEN": "127.0.0.1:0",
        "TOKENPROXY_OPS_LISTEN": "127.0.0.1:0",
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _store_one_record(env_dir: Path) -> None:
    """Put one record in the vault so that a data key exists under the active version."""

    async def run() -> None:
        vault = await Vault.open(
            f"sqlite:///{env_dir / 'vault.db'}",
            LocalKekProvider.from_file(env_dir / "keyring.json"),
        )
        try:
            await vault.put(NewRecord(kind=Kind.CARD, partner="stripe", partner_reference="pm_1"))
        finally:
            await vault.close()

    asyncio.run(run())


def _edit_ring(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _retire_version_1_by_hand(doc: dict[str, Any]) -> None:
    doc["keys"][0].update(state="retired", key=None)


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("missing", "does not exist"),
        ("world-readable", "group or world"),
        ("corrupt", "not valid base64"),
        ("truncated", "truncated"),
        ("wrong-active", "version 1 is decrypt_only"),
        ("retired-in-use", "version 1 is retired but still wraps 1 data key"),
        ("other-ring", "does not belong to this vault: its index key"),
        ("other-index-key", "does not belong to this vault: its index key"),
        ("other-kek", "does not belong to this vault: its key version 1"),
    ],
)
def test_serve_refuses_to_start_with_a_bad_key_ring(env: Path, problem: str, expected: str) -> None:
    """serve exits non-zero with one stderr line naming the key ring file and problem."""
    assert main(["keys", "init"]) == 0
    assert main(["clients", "add", "a", "--scopes", "read"]) == 0
    _store_one_record(env)
    ring = env / "keyring.json"
    if problem == "missing":
        ring.unlink()
    elif problem == "world-readable":
        ring.chmod(0o644)
    elif problem == "corrupt":
        _edit_ring(ring, lambda doc: doc["keys"][0].update(key="not base64!"))
    elif problem == "truncated":
        ring.write_text(ring.read_text()[:40])
    elif problem == "wrong-active":
        assert main(["keys", "rotate"]) == 0
        _edit_ring(ring, lambda doc: doc.update(active=1))
    elif problem == "retired-in-use":
        assert main(["keys", "rotate"]) == 0
        _edit_ring(ring, _retire_version_1_by_hand)
    elif problem == "other-ring":
        assert main(["keys", "rotate"]) == 0
        assert main(["keys", "rewrap"]) == 0
        ring.unlink()
        init_keyring(ring)  # a fresh ring: version 1 only, while the data keys are on 2
    elif problem == "other-index-key":
        _edit_ring(ring, lambda doc: doc.update(index_key=base64.b64encode(b"i" * 32).decode()))
    elif problem == "other-kek":
        _edit_ring(
            ring, lambda doc: doc["keys"][0].update(key=base64.b64encode(b"k" * 32).decode())
        )
    result = _serve(env, {})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "keyring.json" in lines[0]
    assert expected in lines[0], lines[0]


def test_serve_refuses_bad_setting(env: Path) -> None:
    """A malformed setting stops serve with one line naming it."""
    result = _serve(env, {"TOKENPROXY_LISTEN": "nope"})
    assert result.returncode == 2
    assert "TOKENPROXY_LISTEN" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_audit_digest_matches_what_the_trail_records(
    ring: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit digest` prints the same keyed digest the proxy records, for each kind."""
    cases = [
        ("customer", "cus-1001"),
        ("payment_method", "pm_1"),
        ("partner_key", "tp_1"),
        ("event", "evt_1"),
        ("ip_address", "2001:db8::1"),
        ("origin", "203.0.113.7"),
        ("client", "billing"),
        ("cert_subject", "CN=billing"),
    ]
    printed = []
    for what, value in cases:
        capsys.readouterr()
        assert main(["audit", "digest", what, value]) == 0
        printed.append(capsys.readouterr().out.strip())

    async def expected() -> list[str]:
        vault = await Vault.open(
            f"sqlite:///{ring / 'vault.db'}", LocalKekProvider.from_file(ring / "keyring.json")
        )
        try:
            return [vault.audit.digest(what, value) for what, value in cases]
        finally:
            await vault.close()

    assert printed == asyncio.run(expected())
    assert [p.split(":")[0] for p in printed] == [what for what, _ in cases]
    assert "cus-1001" not in printed


def _begin_idempotency_row(env_dir: Path, key: str) -> None:
    """Leave one live idempotency row wrapped under the active version, as a request would."""

    async def run() -> None:
        vault = await Vault.open(
            f"sqlite:///{env_dir / 'vault.db'}",
            LocalKekProvider.from_file(env_dir / "keyring.json"),
        )
        try:
            await IdempotencyStore(vault).begin("checkout", key, b"{}")
        finally:
            await vault.close()

    asyncio.run(run())


def _list_row(out: str, version: int) -> list[str]:
    """The `keys list` row of ``version``, split into columns."""
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == str(version):
            return cells
    raise AssertionError(f"no row for version {version} in {out!r}")


def test_retire_succeeds_after_rewrap_and_list_agrees(
    ring: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After rotate + rewrap, keys list shows 0 for the old version and retire succeeds."""
    _store_one_record(ring)
    _begin_idempotency_row(ring, "order-1")
    assert main(["keys", "rotate"]) == 0
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    assert _list_row(capsys.readouterr().out, 1)[-2:] == ["1", "1"]
    assert main(["keys", "retire", "1"]) == 2
    err = capsys.readouterr().err
    assert "1 record data key(s) and 1 idempotency key(s)" in err
    assert main(["keys", "rewrap"]) == 0
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    assert _list_row(out, 1)[-2:] == ["0", "0"]
    assert "rewrap remaining: 0" in out
    assert main(["keys", "retire", "1"]) == 0
    assert "retired key version 1" in capsys.readouterr().out
