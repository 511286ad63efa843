"""A running server and the CLI refuse a key ring that is not the vault's own, in one line."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from proxy.cli.main import main
from proxy.web.appkeys import SERVICES
from proxy.web.readiness import READINESS
from tests.conftest import RunningProxy
from tests.proxy.test_rotation_load import cli
from vault import LocalKekProvider
from vault.keys.ring import init_keyring, rotate_keyring

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}


async def readyz(proxy: RunningProxy) -> tuple[int, dict[str, Any]]:
    """Status and body of /readyz, after a readiness check made now (not the next periodic one)."""
    await proxy.app[READINESS].probe()
    async with proxy.http.get(proxy.ops + "/readyz") as resp:
        return resp.status, await resp.json()


def server_keys(proxy: RunningProxy) -> LocalKekProvider:
    """The key provider the running server holds."""
    keys = proxy.app[SERVICES].vault.keys
    assert isinstance(keys, LocalKekProvider)
    return keys


def check_rows(path: Path) -> dict[int, bytes]:
    """The recorded check values, read from the vault file."""
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT kek_version, check_value FROM key_checks").fetchall())
    finally:
        db.close()


def rewrite_ring(path: Path, **changes: Any) -> None:
    """Replace the ring file by a copy with top-level or version-1 fields changed (0600)."""
    doc = json.loads(path.read_text())
    if "index_key" in changes:
        doc["index_key"] = changes.pop("index_key")
    doc["keys"][0].update(changes)
    staged = path.with_name("staged.json")
    staged.write_text(json.dumps(doc))
    staged.chmod(0o600)
    staged.replace(path)


def random_key() -> str:
    """A 32-byte key as a ring file holds it."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def swap_ring(path: Path, change: str) -> None:
    """Replace the ring file by one that does not match its vault: a ``fresh`` ring, or
    the same ring with an ``other-index`` key or an ``other-kek``."""
    if change == "fresh":
        path.unlink()
        init_keyring(path)
    elif change == "other-index":
        rewrite_ring(path, index_key=random_key())
    else:
        rewrite_ring(path, key=random_key())


async def tokenize(proxy: RunningProxy) -> str:
    """Store one card through the API; returns its token."""
    status, body, _ = await proxy.request("POST", "/v1/cards", client="checkout", json=CARD)
    assert status == 201, body
    assert body is not None
    token = body["token"]
    assert isinstance(token, str)
    return token


def dek_version_of(vault_path: Path, token: str) -> int:
    """The KEK version wrapping the data key of ``token``."""
    db = sqlite3.connect(vault_path)
    try:
        (version,) = db.execute(
            "SELECT d.kek_version FROM records r JOIN deks d USING (dek_id) WHERE r.token = ?",
            (token,),
        ).fetchone()
    finally:
        db.close()
    return int(version)


async def test_readyz_refuses_a_tampered_check_value(proxy: RunningProxy) -> None:
    """/readyz is 503 key_ring_mismatch while a recorded check value disagrees, 200 again after."""
    assert await readyz(proxy) == (200, {"status": "ready"})
    rows = check_rows(proxy.vault_path)
    db = sqlite3.connect(proxy.vault_path)
    try:
        db.execute("UPDATE key_checks SET check_value = ? WHERE kek_version = 1", (b"\x00" * 32,))
        db.commit()
        assert await readyz(proxy) == (503, {"status": "key_ring_mismatch"})
        db.execute("UPDATE key_checks SET check_value = ? WHERE kek_version = 1", (rows[1],))
        db.commit()
    finally:
        db.close()
    assert await readyz(proxy) == (200, {"status": "ready"})


async def test_a_rotation_by_the_cli_passes_on_a_running_server(proxy: RunningProxy) -> None:
    """`keys rotate` records version 2; the server adopts it, stays ready and wraps with it."""
    await tokenize(proxy)
    code, _, err = await cli(proxy, "keys", "rotate")
    assert code == 0, err
    assert set(check_rows(proxy.vault_path)) == {0, 1, 2}
    # The background readiness check may have adopted the new version already.
    server_keys(proxy).refresh(force=True)
    assert server_keys(proxy).active_version == 2
    assert await readyz(proxy) == (200, {"status": "ready"})
    assert dek_version_of(proxy.vault_path, await tokenize(proxy)) == 2


async def test_a_server_records_a_rotation_the_cli_did_not(proxy: RunningProxy) -> None:
    """A version the server adopted before its check value was recorded gets it recorded."""
    LocalKekProvider.from_file(proxy.settings.keyring_path).rotate()
    assert set(check_rows(proxy.vault_path)) == {0, 1}
    server_keys(proxy).refresh(force=True)
    assert server_keys(proxy).active_version == 2
    assert await readyz(proxy) == (200, {"status": "ready"})
    assert set(check_rows(proxy.vault_path)) == {0, 1, 2}


async def test_a_rotation_not_yet_delivered_keeps_the_pod_serving(proxy: RunningProxy) -> None:
    """A version the vault records beyond this ring (file not yet updated): degraded, not 503."""
    ring = proxy.settings.keyring_path
    pending = ring.with_name("delivered-later.json")
    shutil.copy2(ring, pending)
    rotate_keyring(pending)
    newer = LocalKekProvider.from_file(pending)
    await proxy.app[SERVICES].vault.backend.add_key_check(
        2, newer.check_value(2), "2026-01-01T00:00:00.000000Z"
    )
    assert await readyz(proxy) == (200, {"status": "degraded", "reason": "key_ring_behind"})
    assert dek_version_of(proxy.vault_path, await tokenize(proxy)) == 1
    os.replace(pending, ring)
    assert await readyz(proxy) == (200, {"status": "ready"})
    assert server_keys(proxy).active_version == 2


@pytest.mark.parametrize("change", ["fresh", "other-index", "other-kek"])
async def test_a_reload_to_another_ring_is_not_adopted(proxy: RunningProxy, change: str) -> None:
    """A ring file swapped for one that does not match is ignored: the server keeps its ring."""
    ring = proxy.settings.keyring_path
    before = server_keys(proxy).ring
    swap_ring(ring, change)
    assert server_keys(proxy).refresh(force=True) is False
    assert server_keys(proxy).ring is before
    assert await readyz(proxy) == (200, {"status": "ready"})
    token = await tokenize(proxy)
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{token}", client="orders")
    assert status == 200


# -- the CLI ----------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CLI settings pointing at a vault that holds data under the ring `keys init` made."""
    monkeypatch.setenv("TOKENPROXY_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("TOKENPROXY_CLIENTS", str(tmp_path / "clients.json"))
    monkeypatch.setenv("TOKENPROXY_VAULT_URL", f"sqlite:///{tmp_path / 'vault.db'}")
    monkeypatch.setenv("TOKENPROXY_RETENTION_CARD_DAYS", "30")
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    assert main(["keys", "init"]) == 0
    assert main(["clients", "add", "a", "--scopes", "read"]) == 0
    return tmp_path


COMMANDS = [
    ["migrate"],
    ["keys", "list"],
    ["keys", "rotate"],
    ["keys", "rewrap"],
    ["keys", "retire", "1"],
    ["audit", "verify"],
    ["audit", "export"],
    ["clients", "add", "b", "--scopes", "read"],
    ["purge", "--dry-run"],
]


@pytest.mark.parametrize("change", ["fresh", "other-index", "other-kek"])
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: "-".join(argv[:2]))
def test_cli_commands_refuse_another_ring_in_one_line(
    cli_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], change: str
) -> None:
    """Every command that opens the vault exits 2 with one line when the ring is not its own."""
    ring = cli_env / "keyring.json"
    before = ring.read_bytes()
    swap_ring(ring, change)
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "keyring.json does not belong to this vault" in lines[0]
    assert captured.out == ""
    if argv[:2] == ["keys", "rotate"]:
        # Refused before the ring file was touched.
        assert json.loads(ring.read_text())["active"] == 1
    ring.write_bytes(before)
    assert main(["keys", "list"]) == 0
