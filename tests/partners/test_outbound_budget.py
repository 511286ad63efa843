"""The outbound budget: partner calls a second, in one process or shared through PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from tokenproxy_sandbox.launcher import Localstripe

from proxy.domain.errors import PartnerUnavailable
from proxy.infra.settings import DEFAULT_PARTNER_RATE, Settings, SettingsError
from proxy.partners.budget import LocalBucket, OutboundBudget
from proxy.web.appkeys import METRICS, SERVICES
from proxy.web.sharedlimits import BudgetRows
from tests.cards import VISA
from tests.conftest import make_settings, running_proxy
from tests.proxy.test_cards_api import card_body
from tests.sandbox_front import limit_rate, rate_limited, recorded_requests, reset_front
from vault.backends.postgres import PostgresBackend


class Clock:
    """A hand-driven monotonic clock whose sleeps move it on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def _budget(rate: float, clock: Clock, **kwargs: object) -> OutboundBudget:
    return OutboundBudget(rate, key="partner:test", clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


async def _spent(budget: OutboundBudget, calls: int) -> int:
    """How many of ``calls`` concurrent takes got budget (the rest were refused)."""
    results = await asyncio.gather(*(budget.take() for _ in range(calls)), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, PartnerUnavailable):
            raise result
    return sum(1 for result in results if result is None)


def test_local_bucket_grants_its_burst_then_says_when() -> None:
    """A bucket of burst 3 at one a second grants 3, then none, with the wait for the next."""
    clock = Clock()
    bucket = LocalBucket(clock)
    assert bucket.lease(1.0, 3, 2) == (2, 0.0)
    assert bucket.lease(1.0, 3, 2) == (1, 0.0)
    granted, wait = bucket.lease(1.0, 3, 2)
    assert granted == 0
    assert wait == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.lease(1.0, 3, 5) == (1, 0.0)


async def test_budget_waits_a_little_for_the_next_call() -> None:
    """A call finding the budget spent waits for it when that is within the short wait."""
    clock = Clock()
    budget = _budget(4.0, clock, burst=1, max_wait=1.0)
    await budget.take()
    await budget.take()  # waits 0.25 s on the hand clock
    assert clock.now == pytest.approx(1000.25)


async def test_budget_refuses_with_retry_after_beyond_the_short_wait() -> None:
    """Past its burst a slow budget refuses at once: 503 partner_budget_exhausted, Retry-After."""
    clock = Clock()
    budget = _budget(0.1, clock, max_wait=1.0)  # burst 1, then one call per 10 s
    await budget.take()
    with pytest.raises(PartnerUnavailable) as refused:
        await budget.take()
    assert refused.value.code == "partner_budget_exhausted"
    assert refused.value.status == 503
    assert refused.value.headers["Retry-After"] == "10"
    assert clock.now == 1000.0  # no pointless wait


async def test_workers_of_one_process_split_the_local_budget() -> None:
    """Without a shared source, each of two workers keeps half the burst."""
    clock = Clock()
    budget = _budget(40.0, clock, max_wait=0.0, processes=2)
    assert budget.burst == 10
    assert await _spent(budget, 20) == 5


async def test_unused_leases_expire_and_shrink() -> None:
    """Leased calls left unspent expire after the lease's life, and the next lease is smaller."""
    clock = Clock()
    budget = _budget(100.0, clock, max_wait=0.0, lease_ttl=1.0)
    for _ in range(2):
        await budget.take()  # leases of 1, then 2: one left over
    clock.now += 2.0
    leases = budget._lease_size
    await budget.take()
    assert budget._lease_size < leases


@pytest.fixture
async def replicas(pg_schema_url: str) -> AsyncIterator[list[PostgresBackend]]:
    """Three backends on one migrated schema, as three replicas hold them."""
    opened = [PostgresBackend(pg_schema_url) for _ in range(3)]
    await opened[0].migrate()
    yield opened
    for backend in opened:
        await backend.close()


@pytest.mark.postgres
async def test_replicas_share_one_budget_through_postgres(
    replicas: list[PostgresBackend],
) -> None:
    """Three budgets on three connections, 45 calls at once: exactly the burst of 10 go out."""
    budgets = []
    for backend in replicas:
        budget = OutboundBudget(0.01, key="partner:stripe:test:shared", burst=10, max_wait=0.0)
        budget.source = BudgetRows(backend)
        budgets.append(budget)
    spent = await asyncio.gather(*(_spent(budget, 15) for budget in budgets))
    assert sum(spent) == 10
    # Leases: fewer round trips to the database than calls that went out.
    assert sum(budget.leases for budget in budgets) < 10 + 3 * 15


@pytest.mark.postgres
async def test_lease_grants_what_is_left_then_none(replicas: list[PostgresBackend]) -> None:
    """A lease takes up to its count: 4 of a burst of 6, then the 2 left, then none and a wait."""
    limits = replicas[0]
    assert await limits.limit_lease("partner:lease", 60.0, 6, 4) == (4, 0.0)
    assert await limits.limit_lease("partner:lease", 60.0, 6, 4) == (2, 0.0)
    granted, wait = await limits.limit_lease("partner:lease", 60.0, 6, 4)
    assert granted == 0
    assert 0 < wait <= 60.0


@pytest.mark.postgres
async def test_lease_falls_back_to_the_process_without_the_database() -> None:
    """With the database unreachable the budget spends from this process's bucket."""
    backend = PostgresBackend("postgresql://127.0.0.1:1/none", connect_timeout=0.5)
    try:
        budget = OutboundBudget(0.01, key="partner:down", burst=2, max_wait=0.0)
        budget.source = BudgetRows(backend)
        assert await _spent(budget, 4) == 2
    finally:
        await backend.close()


@pytest.mark.parametrize(
    "value", ["0", "-1", "fast", "0.01"], ids=["zero", "negative", "word", "below-minimum"]
)
def test_invalid_partner_rate_is_refused(tmp_path: Path, keyring_path: Path, value: str) -> None:
    """TOKENPROXY_PARTNER_RATE must be a number of at least 0.1 calls a second."""
    with pytest.raises(SettingsError, match="TOKENPROXY_PARTNER_RATE"):
        make_settings(
            tmp_path, keyring_path, "http://127.0.0.1:9", {"TOKENPROXY_PARTNER_RATE": value}
        )


def test_default_rate_applies_to_stripe_not_to_a_loopback_sandbox(
    tmp_path: Path, keyring_path: Path
) -> None:
    """Against Stripe the default budget applies; a loopback sandbox has none unless set."""
    stripe = make_settings(tmp_path, keyring_path, "https://api.stripe.com")
    assert stripe.outbound_rate() == DEFAULT_PARTNER_RATE == 15.0
    sandbox = make_settings(tmp_path, keyring_path, "http://127.0.0.1:9")
    assert sandbox.outbound_rate() is None
    chosen = make_settings(
        tmp_path, keyring_path, "http://127.0.0.1:9", {"TOKENPROXY_PARTNER_RATE": "7.5"}
    )
    assert chosen.outbound_rate() == 7.5


async def _card(proxy: object) -> tuple[int, dict[str, object] | None, str | None]:
    status, body, resp = await proxy.request(  # type: ignore[attr-defined]
        "POST", "/v1/cards", client="checkout", json=card_body(VISA)
    )
    return status, body, resp.headers.get("Retry-After")


def _exhausted(settings: Settings, app: object) -> float:
    metrics = app[METRICS]  # type: ignore[index]
    value = metrics.registry.get_sample_value(
        "tokenproxy_partner_budget_exhausted_total", {"partner": "stripe"}
    )
    return float(value or 0.0)


async def test_spent_budget_answers_503_and_never_reaches_the_partner(
    tmp_path: Path,
    keyring_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
) -> None:
    """SQLite, one process: past the budget a tokenization gets 503 with Retry-After, counted,
    and the partner sees no request for it."""
    settings = make_settings(
        tmp_path, keyring_path, localstripe.base_url, {"TOKENPROXY_PARTNER_RATE": "0.1"}
    )
    await reset_front(localstripe)
    async with running_proxy(tmp_path, client_keys, settings) as proxy:
        status, _, _ = await _card(proxy)
        assert status == 201
        status, body, retry_after = await _card(proxy)
        assert status == 503
        assert body is not None
        assert body["error"]["code"] == "partner_budget_exhausted"  # type: ignore[index]
        assert retry_after == "10"
        assert _exhausted(settings, proxy.app) == 1.0
        assert proxy.app[SERVICES].partner.budget.source is None  # type: ignore[attr-defined]
    creates = [
        r for r in await recorded_requests(localstripe) if r["path"] == "/v1/payment_methods"
    ]
    assert len(creates) == 1


@pytest.mark.postgres
async def test_two_replicas_on_postgres_share_the_budget(
    tmp_path: Path,
    keyring_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
    pg_schema_url: str,
) -> None:
    """Two proxies on one PostgreSQL vault spend one budget: the second replica's first
    tokenization finds the budget the first replica spent."""
    env = {"TOKENPROXY_PARTNER_RATE": "0.1", "TOKENPROXY_VAULT_URL": pg_schema_url}
    first = make_settings(tmp_path, keyring_path, localstripe.base_url, env)
    second = make_settings(tmp_path, keyring_path, localstripe.base_url, env)
    async with (
        running_proxy(tmp_path, client_keys, first) as one,
        running_proxy(tmp_path, client_keys, second) as other,
    ):
        assert isinstance(other.app[SERVICES].partner.budget.source, BudgetRows)  # type: ignore[attr-defined]
        status, _, _ = await _card(one)
        assert status == 201
        status, body, retry_after = await _card(other)
        assert status == 503, body
        assert body is not None
        assert body["error"]["code"] == "partner_budget_exhausted"  # type: ignore[index]
        assert retry_after is not None
        assert int(retry_after) >= 1
        assert _exhausted(second, other.app) == 1.0


@pytest.fixture
def replica_env(
    tmp_path: Path, keyring_path: Path, localstripe: Localstripe, pg_schema_url: str
) -> list[Settings]:
    """Settings of two replicas on one PostgreSQL vault that never retry a partner call."""
    env = {"TOKENPROXY_VAULT_URL": pg_schema_url, "TOKENPROXY_PARTNER_MAX_RETRIES": "0"}
    return [make_settings(tmp_path, keyring_path, localstripe.base_url, env) for _ in range(2)]


async def _against_a_slow_partner(
    tmp_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
    replicas: list[Settings],
) -> tuple[list[int], set[str], int]:
    """Four tokenizations at once over two replicas, the partner allowing one per 10 s:
    their statuses, the codes of the refusals, and how many the partner refused."""
    await reset_front(localstripe)
    try:
        async with (
            running_proxy(tmp_path, client_keys, replicas[0]) as one,
            running_proxy(tmp_path, client_keys, replicas[1]) as other,
        ):
            await limit_rate(localstripe, 0.1, 1)
            answers = await asyncio.gather(*(_card(p) for p in (one, other, one, other)))
            refused = await rate_limited(localstripe)
    finally:
        await reset_front(localstripe)
    codes = {body["error"]["code"] for status, body, _ in answers if status != 201 and body}  # type: ignore[index]
    return sorted(status for status, _, _ in answers), codes, refused


@pytest.mark.postgres
async def test_shared_budget_keeps_replicas_off_the_partner_rate_limiter(
    tmp_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
    replica_env: list[Settings],
) -> None:
    """Two replicas sharing a budget of the partner's rate answer the surplus 503
    partner_budget_exhausted without sending it: the partner refuses nothing."""
    replicas = [replace(s, partner_rate=0.1) for s in replica_env]
    statuses, codes, refused = await _against_a_slow_partner(
        tmp_path, client_keys, localstripe, replicas
    )
    assert statuses == [201, 503, 503, 503]
    assert codes == {"partner_budget_exhausted"}
    assert refused == 0


@pytest.mark.postgres
async def test_without_a_budget_the_surplus_meets_the_partner_429s(
    tmp_path: Path,
    client_keys: dict[str, str],
    localstripe: Localstripe,
    replica_env: list[Settings],
) -> None:
    """The same load without the budget reaches the partner, which refuses the surplus with
    429 (503 partner_rate_limited to the client): what the budget spares Stripe."""
    statuses, codes, refused = await _against_a_slow_partner(
        tmp_path, client_keys, localstripe, replica_env
    )
    assert statuses == [201, 503, 503, 503]
    assert codes == {"partner_rate_limited"}
    assert refused == 3


async def test_no_second_sees_more_than_one_and_a_half_times_the_rate() -> None:
    """At the default rate, calls tried every 10 ms for 5 s: no one-second window lets more
    than 1.5 x 15 through, under Stripe's 25 a second per endpoint."""
    clock = Clock()
    budget = _budget(DEFAULT_PARTNER_RATE, clock, max_wait=0.0)
    sent: list[float] = []
    for _ in range(500):
        try:
            await budget.take()
        except PartnerUnavailable:
            pass
        else:
            sent.append(clock.now)
        clock.now += 0.01
    busiest = max(sum(1 for t in sent if start <= t < start + 1.0) for start in sent)
    assert busiest <= 1.5 * DEFAULT_PARTNER_RATE < 25
    assert len(sent) >= 5 * DEFAULT_PARTNER_RATE  # and the rate itself goes through
