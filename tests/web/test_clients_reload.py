"""A serving proxy follows its clients file: add, rotate and broken files without a restart."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs
from tokenproxy_sandbox.launcher import Localstripe

from proxy.infra.clients import ClientRegistry, add_client, digest, parse_scopes, rotate_client
from tests.conftest import RunningProxy, make_settings, running_proxy
from tests.helpers import metrics_text
from tests.resilience.serverproc import ServerProcess

POLL = {"TOKENPROXY_CLIENTS_RELOAD_INTERVAL": "0.05"}
UNKNOWN_TOKEN = "/v1/tokens/vtok_card_" + "0" * 32


@pytest.fixture
def proxy_env() -> dict[str, str]:
    """Look at the clients file often, so the tests wait little."""
    return POLL


async def status_with(proxy_base: str, http_get: Callable[..., object], key: str) -> int:
    """The status a read of an unknown token gets with ``key`` (401: key refused)."""
    async with http_get(  # type: ignore[operator]
        proxy_base + UNKNOWN_TOKEN, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return int(resp.status)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 15) -> None:
    """Wait until ``check`` holds; fail naming ``what`` if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"never happened: {what}")


async def cli(proxy: RunningProxy, *args: str) -> str:
    """Run `python -m proxy ARGS` against the served proxy's files; its stdout."""
    settings = proxy.settings
    env = {
        **os.environ,
        "TOKENPROXY_VAULT_URL": settings.vault_url,
        "TOKENPROXY_KEYRING": str(settings.keyring_path),
        "TOKENPROXY_CLIENTS": str(settings.clients_path),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


def reloads(text: str, outcome: str) -> float:
    """tokenproxy_clients_reload_total for ``outcome`` in /metrics text."""
    match = re.search(
        rf'^tokenproxy_clients_reload_total{{outcome="{outcome}"}} (\S+)$', text, re.M
    )
    assert match, text
    return float(match.group(1))


async def test_clients_add_while_serving_lets_the_new_key_in(proxy: RunningProxy) -> None:
    """A key from `clients add` run while serving is accepted without a restart."""
    out = await cli(proxy, "clients", "add", "late", "--scopes", "read")
    key = out.strip().splitlines()[-1]

    async def accepted() -> bool:
        return await status_with(proxy.base, proxy.http.get, key) == 404

    await eventually(accepted, "the new key accepted")
    text = await metrics_text(proxy)
    assert reloads(text, "success") >= 1
    assert reloads(text, "failure") == 0
    assert "tokenproxy_clients_loaded 7.0" in text


async def test_broken_file_keeps_the_last_good_clients(proxy: RunningProxy) -> None:
    """A clients file that does not validate leaves the old keys working, logged and counted."""
    path = proxy.settings.clients_path
    good = path.read_text()
    with capture_logs() as logs:
        broken = path.with_name("clients.tmp")
        broken.write_text(good.replace('"format"', '"fornat"'))
        os.replace(broken, path)

        async def counted() -> bool:
            return reloads(await metrics_text(proxy), "failure") == 1

        await eventually(counted, "the failed reload counted")
    assert await status_with(proxy.base, proxy.http.get, proxy.keys["orders"]) == 404
    failed = [e for e in logs if e["event"] == "clients_reload_failed"]
    assert len(failed) == 1
    assert str(path) in failed[0]["problem"]
    line = json.dumps(failed[0])
    for key in proxy.keys.values():
        assert key not in line
        assert digest(key) not in line
    # Fixed again: taken at the next look.
    # Counted before the swap: the reload may come before the next scrape does.
    before = reloads(await metrics_text(proxy), "success")
    fixed = path.with_name("clients.tmp")
    fixed.write_text(good)
    os.replace(fixed, path)

    async def reloaded() -> bool:
        return reloads(await metrics_text(proxy), "success") > before

    await eventually(reloaded, "the fixed file reloaded")


class Clock:
    """A settable wall clock for the served registry."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clocked_proxy(
    tmp_path: Path,
    keyring_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
) -> AsyncIterator[tuple[RunningProxy, Clock]]:
    """The full proxy whose clients registry reads a clock the test sets."""
    settings = make_settings(tmp_path, keyring_path, localstripe.base_url, POLL)
    clock = Clock()
    registry = ClientRegistry.load(settings.clients_path, clock=clock)
    async with running_proxy(tmp_path, client_keys, settings, clients=registry) as running:
        yield running, clock


async def test_rotation_keeps_both_keys_until_expiry_then_only_the_new_one(
    clocked_proxy: tuple[RunningProxy, Clock],
) -> None:
    """While serving, a rotated client's old key works until its end, the new one throughout."""
    proxy, clock = clocked_proxy
    old = proxy.keys["orders"]
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    new = rotate_client(proxy.settings.clients_path, "orders", old_valid_until=until)

    async def new_accepted() -> bool:
        return await status_with(proxy.base, proxy.http.get, new) == 404

    await eventually(new_accepted, "the rotated key accepted")
    assert await status_with(proxy.base, proxy.http.get, old) == 404
    clock.now = until.timestamp() - 1
    assert await status_with(proxy.base, proxy.http.get, old) == 404
    clock.now = until.timestamp()
    assert await status_with(proxy.base, proxy.http.get, old) == 401
    assert await status_with(proxy.base, proxy.http.get, new) == 404


async def test_sighup_reloads_at_once(tmp_path: Path) -> None:
    """With polling off, SIGHUP makes a served process take a client added since start."""
    server = ServerProcess(
        tmp_path / "srv", "http://127.0.0.1:9", TOKENPROXY_CLIENTS_RELOAD_INTERVAL="0"
    )
    await server.start()
    try:
        key = add_client(server.workdir / "clients.json", "late", parse_scopes("read"))
        async with aiohttp.ClientSession() as http:
            assert await status_with(server.base, http.get, key) == 401
            assert server.process is not None
            server.process.send_signal(signal.SIGHUP)

            async def accepted() -> bool:
                return await status_with(server.base, http.get, key) == 404

            await eventually(accepted, "the key accepted after SIGHUP")
    finally:
        server.kill()
