"""A listen address already in use stops `serve` and `dev` with one line, before any output."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenproxy_sandbox.launcher import free_port


@pytest.fixture
def occupied() -> Iterator[str]:
    """A loopback address another socket is listening on."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        yield f"127.0.0.1:{taken.getsockname()[1]}"


def run(command: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m proxy COMMAND`` with its state under ``tmp_path``."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TOKENPROXY_", "STRIPE_API_KEY"))
    }
    environ.update(
        {
            "TOKENPROXY_DEV_DIR": str(tmp_path / "var"),
            "TOKENPROXY_LISTEN": f"127.0.0.1:{free_port()}",
            "TOKENPROXY_OPS_LISTEN": f"127.0.0.1:{free_port()}",
            **env,
        }
    )
    if command == "serve":
        environ.update(
            {
                "TOKENPROXY_KEYRING": str(tmp_path / "var" / "keyring.json"),
                "TOKENPROXY_CLIENTS": str(tmp_path / "var" / "clients.json"),
                "TOKENPROXY_VAULT_URL": f"sqlite:///{tmp_path / 'var' / 'vault.db'}",
                "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:9",
            }
        )
    return subprocess.run(
        [sys.executable, "-m", "proxy", command],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["dev", "serve"])
@pytest.mark.parametrize("setting", ["TOKENPROXY_LISTEN", "TOKENPROXY_OPS_LISTEN"])
def test_busy_port_is_one_line_naming_address_and_setting(
    command: str, setting: str, occupied: str, tmp_path: Path
) -> None:
    """A busy API or ops port: exit non-zero, one stderr line, nothing printed or written."""
    done = run(command, tmp_path, {setting: occupied})
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr == (
        f"tokenproxy: cannot listen on {occupied} (address in use); set {setting}\n"
    )
    assert not (tmp_path / "var").exists()


def test_api_and_ops_on_one_address_names_the_ops_setting(tmp_path: Path) -> None:
    """Both listeners on the same address: the second one to bind is named, in one line."""
    address = f"127.0.0.1:{free_port()}"
    done = run("dev", tmp_path, {"TOKENPROXY_LISTEN": address, "TOKENPROXY_OPS_LISTEN": address})
    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        f"tokenproxy: cannot listen on {address} (address in use); set TOKENPROXY_OPS_LISTEN"
    ]
    assert not (tmp_path / "var").exists()
