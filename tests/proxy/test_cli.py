"""The tokenproxy command: keys init, clients add, migrate, and fail-closed start-up."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.__main__ import main
from proxy.clients import ClientRegistry
from vault.backends.sqlite import migration_scripts


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the CLI's settings at files in the test directory."""
    monkeypatch.setenv("TOKENPROXY_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("TOKENPROXY_CLIENTS", str(tmp_path / "clients.json"))
    monkeypatch.setenv("TOKENPROXY_VAULT_URL", f"sqlite:///{tmp_path / 'vault.db'}")
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    return tmp_path


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
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """clients add prints a tpk_ key, stores its SHA-256 only, and the key authenticates."""
    assert main(["clients", "add", "billing", "--scopes", "resolve,read"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("tpk_")
    stored = (env / "clients.json").read_text()
    assert key not in stored
    doc = json.loads(stored)
    assert doc["clients"][0]["scopes"] == ["read", "resolve"]
    client = ClientRegistry.load(env / "clients.json").authenticate(key)
    assert client is not None
    assert client.name == "billing"
    assert ClientRegistry.load(env / "clients.json").authenticate(key + "x") is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["clients", "add", "x", "--scopes", "tokenize,superuser"], "scopes"),
        (["clients", "add", "Bad Name!", "--scopes", "read"], "client name"),
    ],
)
def test_clients_add_rejects_bad_input(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Unknown scopes and bad names are refused with a clear message."""
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_duplicate_client_name_refused(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second client with the same name is refused."""
    assert main(["clients", "add", "orders", "--scopes", "read"]) == 0
    assert main(["clients", "add", "orders", "--scopes", "read"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_migrate_reports_schema_version(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """migrate applies the schema and prints the version."""
    assert main(["keys", "init"]) == 0
    assert main(["migrate"]) == 0
    latest = max(version for version, _ in migration_scripts("sqlite"))
    assert f"schema at version {latest}" in capsys.readouterr().out


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


@pytest.mark.parametrize("problem", ["missing", "world-readable", "corrupt"])
def test_serve_refuses_to_start_with_a_bad_key_ring(env: Path, problem: str) -> None:
    """serve exits non-zero with one stderr line naming the key ring file and problem."""
    assert main(["clients", "add", "a", "--scopes", "read"]) == 0
    ring = env / "keyring.json"
    if problem != "missing":
        assert main(["keys", "init"]) == 0
    if problem == "world-readable":
        ring.chmod(0o644)
    if problem == "corrupt":
        ring.write_text(ring.read_text()[:40])
    result = _serve(env, {})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "keyring.json" in lines[0]


def test_serve_refuses_bad_setting(env: Path) -> None:
    """A malformed setting stops serve with one line naming it."""
    result = _serve(env, {"TOKENPROXY_LISTEN": "nope"})
    assert result.returncode == 2
    assert "TOKENPROXY_LISTEN" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
