"""Fixtures for the resilience tests: a fault proxy in front of localstripe, proxies behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY, Localstripe, free_port

from proxy.infra.clients import add_client, parse_scopes
from proxy.infra.metrics import Metrics
from proxy.infra.settings import Settings
from proxy.web.app import create_app, create_ops_app
from proxy.web.limits import ApiRunner, server_options
from tests.conftest import RunningProxy
from tests.faultproxy import FaultProxy

# Fast retries so the tests spend their time on behaviour, not on backoff sleeps.
FAST = {
    "TOKENPROXY_PARTNER_TIMEOUT": "3",
    "TOKENPROXY_PARTNER_CONNECT_TIMEOUT": "1",
    "TOKENPROXY_PARTNER_BACKOFF_BASE": "0.01",
    "TOKENPROXY_PARTNER_BACKOFF_MAX": "0.05",
}

MakeProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def faults(localstripe: Localstripe) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of localstripe that honours Idempotency-Key as Stripe does."""
    fp = await FaultProxy(localstripe.base_url, stripe_idempotency=True).start()
    yield fp
    await fp.close()


def proxy_env(tmp_path: Path, keyring_path: Path, partner_base: str) -> dict[str, str]:
    """The environment an operator would write for a test proxy behind ``partner_base``."""
    return {
        "TOKENPROXY_LISTEN": f"127.0.0.1:{free_port()}",
        "TOKENPROXY_OPS_LISTEN": f"127.0.0.1:{free_port()}",
        "TOKENPROXY_VAULT_URL": f"sqlite:///{tmp_path / 'vault.db'}",
        "TOKENPROXY_KEYRING": str(keyring_path),
        "TOKENPROXY_CLIENTS": str(tmp_path / "clients.json"),
        "STRIPE_API_KEY": SANDBOX_API_KEY,
        "TOKENPROXY_STRIPE_API_BASE": partner_base,
        **FAST,
    }


@pytest.fixture
def second_checkout(tmp_path: Path, client_keys: dict[str, str]) -> dict[str, str]:
    """A second client with the tokenize scope (idempotency keys are scoped per client)."""
    client_keys["checkout2"] = add_client(
        tmp_path / "clients.json", "checkout2", parse_scopes("tokenize")
    )
    return client_keys


@pytest.fixture
async def make_proxy(
    tmp_path: Path,
    keyring_path: Path,
    second_checkout: dict[str, str],
    faults: FaultProxy,
) -> AsyncIterator[MakeProxy]:
    """Start a proxy behind the fault proxy with extra settings; stopped at teardown."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(**env: str) -> RunningProxy:
        settings = Settings.from_env({**proxy_env(tmp_path, keyring_path, faults.base_url), **env})
        app = create_app(settings, metrics=Metrics())
        runner = ApiRunner(app, access_log=None, **server_options(settings))
        ops_runner = web.AppRunner(create_ops_app(app), access_log=None)
        for r in (runner, ops_runner):
            await r.setup()
            runners.append(r)
        await web.TCPSite(runner, settings.listen.host, settings.listen.port).start()
        await web.TCPSite(ops_runner, settings.ops_listen.host, settings.ops_listen.port).start()
        http = aiohttp.ClientSession()
        sessions.append(http)
        return RunningProxy(
            base=f"http://{settings.listen}",
            ops=f"http://{settings.ops_listen}",
            keys=second_checkout,
            app=app,
            http=http,
            settings=settings,
            vault_path=tmp_path / "vault.db",
        )

    yield start
    for http in sessions:
        await http.close()
    for r in reversed(runners):
        await r.cleanup()


@pytest.fixture
async def fproxy(make_proxy: MakeProxy) -> RunningProxy:
    """A proxy behind the fault proxy with default resilience settings (fast backoff)."""
    return await make_proxy()


async def metric(proxy: RunningProxy, name: str, **labels: str) -> float:
    """The value of one sample on the proxy's /metrics (0 when absent)."""
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        text = await resp.text()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        metric_name, _, rest = sample.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric_name == name and got == want:
            return float(value)
    return 0.0
