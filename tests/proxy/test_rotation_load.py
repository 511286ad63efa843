"""Rotation under load: the real CLI rotates and rewraps (killed once) while clients resolve."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningProxy
from vault import Kind, LocalKekProvider, NewRecord, Vault

SEEDED = 1500


def cli_env(proxy: RunningProxy) -> dict[str, str]:
    """The environment an operator's shell would have next to the running service."""
    settings = proxy.settings
    return {
        **os.environ,
        "TOKENPROXY_KEYRING": str(settings.keyring_path),
        "TOKENPROXY_CLIENTS": str(settings.clients_path),
        "TOKENPROXY_VAULT_URL": settings.vault_url,
        "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:9",
    }


async def cli(proxy: RunningProxy, *args: str) -> tuple[int, str, str]:
    """Run `tokenproxy ARGS` as a subprocess; returns exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        env=cli_env(proxy),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def deks_by_version(path: Path) -> dict[int, int]:
    """Data keys per version, read from the file."""
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT kek_version, count(*) FROM deks GROUP BY 1").fetchall())
    finally:
        db.close()


async def seed(proxy: RunningProxy) -> list[str]:
    """Store records through a second vault on the same file, so the server has none cached."""
    vault = await Vault.open(
        proxy.settings.vault_url,
        LocalKekProvider.from_file(proxy.settings.keyring_path),
    )
    try:
        records = await asyncio.gather(
            *(
                vault.put(
                    NewRecord(
                        kind=Kind.CARD,
                        partner="stripe",
                        partner_reference=f"pm_load_{i}",
                        customer_ref=f"cus-{i}" if i % 10 == 0 else None,
                    )
                )
                for i in range(SEEDED)
            )
        )
    finally:
        await vault.close()
    return [r.token for r in records]


@pytest.mark.slow
async def test_rotate_and_rewrap_under_load_with_a_kill(proxy: RunningProxy) -> None:
    """Reads never fail while the CLI rotates, rewraps (SIGKILLed once, resumed) and retires."""
    tokens = await seed(proxy)
    expected = {t: f"pm_load_{i}" for i, t in enumerate(tokens)}
    # The loop reads the first half throughout; the second half is first read only after
    # the rewrap, so the server must unwrap DEKs under a version it did not start with.
    hot, cold = tokens[: SEEDED // 2], tokens[SEEDED // 2 :]
    failures: list[tuple[int, str]] = []
    reads = 0
    stop = asyncio.Event()

    async def resolve_forever() -> None:
        nonlocal reads
        rng = random.Random()
        while not stop.is_set():
            token = rng.choice(hot)
            status, body, _ = await proxy.request("GET", f"/v1/tokens/{token}", client="billing")
            reads += 1
            if status != 200 or body is None or body["partner_reference"] != expected[token]:
                failures.append((status, token))

    loops = [asyncio.create_task(resolve_forever()) for _ in range(4)]
    try:
        code, out, err = await cli(proxy, "keys", "rotate")
        assert code == 0, err
        assert "version 2 is active" in out

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "keys",
            "rewrap",
            "--batch-size",
            "10",
            env=cli_env(proxy),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        progress_lines = 0
        while progress_lines < 5:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            assert line, "rewrap ended before it could be killed"
            progress_lines += line.startswith(b"rewrap: ")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        halfway = deks_by_version(proxy.vault_path)
        assert halfway.get(1, 0) > 0, halfway
        assert halfway.get(2, 0) > 0, halfway

        code, out, err = await cli(proxy, "keys", "rewrap", "--batch-size", "50")
        assert code == 0, err
        assert "0 failed, 0 remaining" in out
        assert deks_by_version(proxy.vault_path) == {2: sum(halfway.values())}

        code, out, err = await cli(proxy, "keys", "retire", "1")
        assert code == 0, err
        await asyncio.sleep(0.5)  # keep reading a little past the retirement
    finally:
        stop.set()
        await asyncio.gather(*loops)

    assert failures == []
    assert reads > 0
    for token in cold:
        status, body, _ = await proxy.request("GET", f"/v1/tokens/{token}", client="billing")
        assert status == 200
        assert body is not None
        assert body["partner_reference"] == expected[token]

    code, out, _ = await cli(proxy, "keys", "list")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows["1"][2:] == ["retired", "0", "0"]
    assert rows["2"][2:] == ["active", str(sum(halfway.values())), "0"]
    assert "rewrap remaining: 0" in out

    code, out, err = await cli(proxy, "audit", "verify")
    assert code == 0, err
    assert "audit chain intact" in out
    code, out, _ = await cli(proxy, "audit", "export")
    kinds = [line.split('"event_type":"')[1].split('"')[0] for line in out.splitlines()]
    assert kinds.count("key.rotate") == 1
    assert kinds.count("key.rewrap") == 1  # the killed run never got to write its event
    assert kinds.count("key.retire") == 1
    assert kinds.count("token.resolve") == reads + len(cold)
