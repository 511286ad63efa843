"""Fixtures for the resilience tests: a fault proxy in front of localstripe, proxies behind it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from tokenproxy_sandbox.launcher import Localstripe

from proxy.infra.clients import add_client, parse_scopes
from tests.conftest import RunningProxy, make_settings, running_proxy
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
    async with contextlib.AsyncExitStack() as running:

        async def start(**env: str) -> RunningProxy:
            settings = make_settings(tmp_path, keyring_path, faults.base_url, {**FAST, **env})
            return await running.enter_async_context(
                running_proxy(tmp_path, second_checkout, settings)
            )

        yield start


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
