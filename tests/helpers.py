"""Helpers shared by the bank, invoice, customer and retention tests."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe

from tests.conftest import RunningProxy
from tests.ibans import VALID, IbanCase


def stop_process(process: subprocess.Popen[Any], *, within: float = 30.0) -> None:
    """SIGTERM ``process`` (what Kubernetes sends) and wait; SIGKILL it after ``within`` s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


async def partner_get(localstripe: Localstripe, path: str) -> tuple[int, dict[str, Any]]:
    """GET an object straight from localstripe (what the partner holds)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            localstripe.base_url + path,
            headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
        ) as resp,
    ):
        return resp.status, await resp.json()


def bank_body(case: IbanCase = VALID[0], **overrides: object) -> dict[str, object]:
    """A valid POST /v1/bank-accounts body."""
    body: dict[str, object] = {
        "iban": case.iban,
        "holder_name": "Greta Garbo",
        "email": "greta@example.se",
    }
    body.update(overrides)
    if body.get("customer_ref") is not None and "mandate_acceptance" not in body:
        # Saving on a customer needs the shopper's mandate acceptance.
        body["mandate_acceptance"] = dict(MANDATE_ACCEPTANCE)
    return body


# What a checkout passes with a bank account it saves: the shopper's address and browser.
MANDATE_ACCEPTANCE: dict[str, object] = {
    "ip_address": "203.0.113.7",
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
}


async def create(
    proxy: RunningProxy, path: str, body: dict[str, object], client: str = "checkout"
) -> dict[str, Any]:
    """POST and insist on a 201."""
    status, payload, _ = await proxy.request("POST", path, client=client, json=body)
    assert status == 201, payload
    assert payload is not None
    return payload


async def resolve(proxy: RunningProxy, token: str) -> dict[str, Any]:
    """The resolved view of a token."""
    status, payload, _ = await proxy.request("GET", f"/v1/tokens/{token}", client="billing")
    assert status == 200, payload
    assert payload is not None
    return payload


def rows(path: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows from the vault file, read as an outsider would."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


async def metrics_text(proxy: RunningProxy) -> str:
    """The ops listener's /metrics."""
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        return await resp.text()


def counted(text: str, name: str) -> list[str]:
    """The series of ``name`` in exposition text whose value is not 0 (known ones start at 0)."""
    return [
        line
        for line in text.splitlines()
        if line.startswith(name + "{") and not line.endswith(" 0.0")
    ]


def db_bytes(path: Path) -> bytes:
    """Every byte of the vault file and its -wal/-shm companions."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


# Sessions waiting for an advisory lock the asking session holds: only that lock, as other
# test runs on the same server may be waiting for their own schemas' locks meanwhile.
WAITING_FOR_MY_ADVISORY_LOCK = (
    "SELECT count(*) FROM pg_locks AS w JOIN pg_locks AS h"
    " ON (w.database, w.classid, w.objid, w.objsubid)"
    " = (h.database, h.classid, h.objid, h.objsubid)"
    " WHERE w.locktype = 'advisory' AND NOT w.granted"
    " AND h.locktype = 'advisory' AND h.granted AND h.pid = pg_backend_pid()"
)
