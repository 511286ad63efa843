"""`tokenproxy reconcile`: JSON lines and a summary on stdout, exit status, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe

from proxy.cli.main import main
from proxy.core.cards import tokenize_card
from proxy.core.services import Services
from proxy.infra.metrics import Metrics
from proxy.partners.stripe import StripePartner
from tests.proxy.test_cards_api import card_body
from vault import LocalKekProvider, Vault


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, localstripe: Localstripe) -> Path:
    """The CLI's settings: a SQLite vault and key ring in the test directory, localstripe."""
    monkeypatch.setenv("TOKENPROXY_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("TOKENPROXY_CLIENTS", str(tmp_path / "clients.json"))
    monkeypatch.setenv("TOKENPROXY_VAULT_URL", f"sqlite:///{tmp_path / 'vault.db'}")
    monkeypatch.setenv("TOKENPROXY_STRIPE_API_BASE", localstripe.base_url)
    monkeypatch.setenv("STRIPE_API_KEY", SANDBOX_API_KEY)
    assert main(["keys", "init"]) == 0
    return tmp_path


async def _dangling_card(env: Path, localstripe: Localstripe) -> str:
    """A card saved on a customer, then detached at the partner behind the vault's back."""
    vault = await Vault.open(
        f"sqlite:///{env / 'vault.db'}", LocalKekProvider.from_file(env / "keyring.json")
    )
    partner = StripePartner(SANDBOX_API_KEY, api_base=localstripe.base_url)
    try:
        services = Services(vault=vault, partner=partner, metrics=Metrics())
        created = await tokenize_card(
            services, card_body(customer_ref="cli-rc"), today=date(2026, 1, 1)
        )
        record = await vault.get(created["token"])
        assert record.partner_reference is not None
        assert await partner.detach(record.partner_reference)
        return record.token
    finally:
        await partner.close()
        await vault.close()


def test_reconcile_prints_findings_and_a_summary(
    env: Path, localstripe: Localstripe, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each finding is a JSON line, the last line the summary; --fix marks the token detached."""
    token = asyncio.run(_dangling_card(env, localstripe))
    capsys.readouterr()
    assert main(["reconcile", "--types", "card", "--rate", "100"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["finding"] == "dangling"
    assert (lines[0]["token"], lines[0]["fixed"]) == (token, False)
    assert lines[-1]["complete"] is True
    assert lines[-1]["summary"]["found"]["dangling"] == 1
    assert main(["reconcile", "--fix", "--customer", "cli-rc", "--types", "card"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (lines[0]["finding"], lines[0]["fixed"]) == ("dangling", True)
    assert lines[-1]["complete"] is False


def test_unknown_customer_and_bad_options_are_refused(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown customer_ref exits 1 with one line; a zero rate or unknown type is misuse."""
    assert main(["reconcile", "--customer", "nobody-here"]) == 1
    assert "customer_ref" in capsys.readouterr().err
    for argv in (["--rate", "0"], ["--types", "paypal"]):
        with pytest.raises(SystemExit) as exited:
            main(["reconcile", *argv])
        assert exited.value.code == 2


def test_progress_shows_on_a_terminal_only(env: Path, localstripe: Localstripe) -> None:
    """On a terminal stderr counts customers as they are checked; stdout stays JSON lines."""
    asyncio.run(_dangling_card(env, localstripe))
    command = [sys.executable, "-m", "proxy", "reconcile", "--types", "card"]
    main_fd, terminal = pty.openpty()
    try:
        done = subprocess.run(
            command, stderr=terminal, stdout=subprocess.PIPE, timeout=60, check=False
        )
        os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed
            while chunk := os.read(main_fd, 4096):
                shown += chunk
    finally:
        os.close(main_fd)
    assert done.returncode == 0
    assert b"reconcile: 1 customers checked" in shown
    assert all(json.loads(line) for line in done.stdout.decode().splitlines())
    piped = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert piped.returncode == 0
    assert b"customers checked" not in piped.stderr
