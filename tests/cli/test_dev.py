"""`tokenproxy dev` (what `make run` runs): its state lives under var/ of the working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, free_port

from tests.helpers import stop_process


@pytest.fixture
def dev_process(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """`python -m proxy dev` started in a fresh directory, as from a fresh clone."""
    clone = tmp_path / "clone"
    clone.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TOKENPROXY_", "STRIPE_API_KEY"))
    }
    env.update(
        {
            "TOKENPROXY_LISTEN": f"127.0.0.1:{free_port()}",
            "TOKENPROXY_OPS_LISTEN": f"127.0.0.1:{free_port()}",
            # A partner that is never called keeps localstripe out of this test.
            "STRIPE_API_KEY": SANDBOX_API_KEY,
            "TOKENPROXY_STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}",
            "TOKENPROXY_LOG_FORMAT": "json",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "dev"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield clone, process
    finally:
        stop_process(process, within=20)
        if process.stdout is not None:
            process.stdout.close()


def _lines_until_started(process: subprocess.Popen[str], within: float = 60.0) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if '"event":"started"' in line:
            return lines
    pytest.fail("dev mode did not start:\n" + "\n".join(lines))


def test_dev_keeps_its_vault_under_var_of_the_working_directory(
    dev_process: tuple[Path, subprocess.Popen[str]],
) -> None:
    """A fresh directory's `tokenproxy dev` creates var/vault.db there and names it at start."""
    clone, process = dev_process
    lines = _lines_until_started(process)
    vault = clone / "var" / "vault.db"
    assert vault.is_file()
    assert (clone / "var" / "keyring.json").is_file()
    assert f"vault: {vault} " in "\n".join(lines)
    started = json.loads(lines[-1])
    assert started["vault"] == str(vault)
