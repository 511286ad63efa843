"""Retry, backoff and circuit-breaker rules, proved against injected partner faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenproxy_sandbox.launcher import SANDBOX_API_KEY

from proxy.domain.errors import PartnerDeclined, PartnerError, PartnerTimeout, PartnerUnavailable
from proxy.domain.requests import CardRequest, parse_card_request
from proxy.infra.metrics import Metrics
from proxy.partners.resilience import CircuitBreaker, CircuitState, ResilientPartner, RetryPolicy
from proxy.partners.stripe import StripePartner
from tests.conftest import RunningProxy
from tests.faultproxy import Fault, FaultProxy
from tests.helpers import create
from tests.proxy.test_cards_api import card_body
from tests.resilience.conftest import MakeProxy, metric


def a_card() -> CardRequest:
    """A validated card request."""
    return parse_card_request(card_body(), today=date(2026, 1, 1))


class Sleeps:
    """Records the backoff delays asked for (and sleeps a token amount)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def stripe_via_faults(faults: FaultProxy) -> AsyncIterator[StripePartner]:
    """The real Stripe adapter talking to the fault proxy, with a short timeout."""
    partner = StripePartner(
        SANDBOX_API_KEY, api_base=faults.base_url, timeout=0.5, connect_timeout=0.5
    )
    yield partner
    await partner.close()


def wrap(
    inner: StripePartner, *, retries: int = 3, budget: float = 30.0, failures: int = 100
) -> tuple[ResilientPartner, Sleeps, Metrics]:
    """A ResilientPartner around ``inner`` recording its sleeps."""
    sleeps = Sleeps()
    metrics = Metrics()
    partner = ResilientPartner(
        inner,
        policy=RetryPolicy(max_retries=retries, budget=budget, backoff_base=0.01, backoff_max=0.02),
        breaker=CircuitBreaker(failures=failures, reset_after=60),
        metrics=metrics,
        sleep=sleeps,
    )
    return partner, sleeps, metrics


@pytest.mark.parametrize(
    "fault",
    [Fault.error(409), Fault.error(429), Fault.reset(), Fault.drop()],
    ids=["409", "429", "reset", "drop"],
)
async def test_retryable_faults_are_retried_with_the_same_key(
    stripe_via_faults: StripePartner, faults: FaultProxy, fault: Fault
) -> None:
    """Network errors, 409 and 429 are retried, always with one idempotency key."""
    partner, sleeps, _ = wrap(stripe_via_faults)
    faults.script(fault, fault)
    created = await partner.create_card(a_card(), idempotency_key="tp_fixed")
    posts = faults.payment_method_posts()
    assert len(posts) == 3
    assert {p.idempotency_key for p in posts} == {"tp_fixed"}
    assert len(sleeps.delays) == 2
    assert faults.created["tp_fixed"] == {created.reference}


@pytest.mark.parametrize(
    "fault", [Fault.error(500), Fault.error(502), Fault.error(503)], ids=["500", "502", "503"]
)
async def test_a_5xx_is_retried_under_a_fresh_key(
    stripe_via_faults: StripePartner, faults: FaultProxy, fault: Fault
) -> None:
    """After a 5xx the partner answered (and saved under its key), each retry uses a new key."""
    partner, sleeps, _ = wrap(stripe_via_faults)
    faults.script(fault, fault)
    created = await partner.create_card(a_card(), idempotency_key="tp_fixed")
    keys = [p.idempotency_key for p in faults.payment_method_posts()]
    assert len(keys) == 3
    assert keys[0] == "tp_fixed"
    assert len(set(keys)) == 3
    assert all(k is not None and k.startswith("tp_fixed_r") for k in keys[1:])
    assert faults.created[keys[2]] == {created.reference}
    assert len(sleeps.delays) == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.decline(), PartnerDeclined),
        (Fault.error(400, code="parameter_invalid_integer"), PartnerError),
        (Fault.error(401), PartnerError),
        (Fault.error(403), PartnerError),
        (Fault.error(404), PartnerError),
    ],
    ids=["402-decline", "400", "401", "403", "404"],
)
async def test_client_errors_are_never_retried(
    stripe_via_faults: StripePartner, faults: FaultProxy, fault: Fault, error: type
) -> None:
    """Card errors and other 4xx fail once: a retry would fail the same way."""
    partner, sleeps, _ = wrap(stripe_via_faults)
    faults.script(fault)
    with pytest.raises(error):
        await partner.create_card(a_card())
    assert len(faults.payment_method_posts()) == 1
    assert sleeps.delays == []


async def test_retry_after_is_honoured(
    stripe_via_faults: StripePartner, faults: FaultProxy
) -> None:
    """A 429's Retry-After is the least the proxy waits before retrying."""
    partner, sleeps, _ = wrap(stripe_via_faults)
    faults.script(Fault.error(429, retry_after="2"))
    await partner.create_card(a_card())
    assert len(sleeps.delays) == 1
    assert sleeps.delays[0] >= 2


async def test_retry_after_beyond_the_budget_gives_up(
    stripe_via_faults: StripePartner, faults: FaultProxy
) -> None:
    """A Retry-After longer than the remaining budget ends the call (503 rate limited)."""
    partner, sleeps, _ = wrap(stripe_via_faults, budget=1.0)
    faults.script(Fault.error(429, retry_after="5"))
    with pytest.raises(PartnerUnavailable) as caught:
        await partner.create_card(a_card())
    assert caught.value.code == "partner_rate_limited"
    assert sleeps.delays == []
    assert len(faults.payment_method_posts()) == 1


async def test_retries_are_bounded_in_count(
    stripe_via_faults: StripePartner, faults: FaultProxy
) -> None:
    """A partner failing forever gets 1 + max_retries attempts, then the error."""
    partner, _sleeps, metrics = wrap(stripe_via_faults, retries=2)
    faults.script(then=Fault.error(500))
    with pytest.raises(PartnerError):
        await partner.create_card(a_card())
    assert len(faults.payment_method_posts()) == 3
    retried = metrics.partner_retries.labels("stripe", "create_card", "partner_error")
    assert retried._value.get() == 2


async def test_retries_are_bounded_in_time(
    stripe_via_faults: StripePartner, faults: FaultProxy
) -> None:
    """Attempts that time out stop once the total budget would be exceeded."""
    partner = ResilientPartner(
        stripe_via_faults,
        policy=RetryPolicy(max_retries=50, budget=1.2, backoff_base=0.01, backoff_max=0.01),
        breaker=CircuitBreaker(failures=1000),
    )
    faults.script(then=Fault.hang())
    with pytest.raises(PartnerTimeout):
        await partner.create_card(a_card())
    # 0.5 s per attempt within a 1.2 s budget: far fewer than the 51 the count allows.
    assert 2 <= len(faults.payment_method_posts()) <= 4


async def test_hang_times_out_as_504(make_proxy: MakeProxy, faults: FaultProxy) -> None:
    """A partner that never answers yields 504 partner_timeout after the retries."""
    proxy = await make_proxy(TOKENPROXY_PARTNER_TIMEOUT="0.3", TOKENPROXY_PARTNER_MAX_RETRIES="1")
    faults.script(then=Fault.hang())
    status, body, _ = await proxy.request("POST", "/v1/cards", client="checkout", json=card_body())
    assert status == 504
    assert body is not None
    assert body["error"]["code"] == "partner_timeout"
    assert len(faults.payment_method_posts()) == 2


async def test_circuit_opens_fails_fast_and_recovers(
    make_proxy: MakeProxy, faults: FaultProxy
) -> None:
    """After N failures the breaker answers 503 without calling; a good probe closes it."""
    proxy: RunningProxy = await make_proxy(
        TOKENPROXY_PARTNER_MAX_RETRIES="0",
        TOKENPROXY_BREAKER_FAILURES="3",
        TOKENPROXY_BREAKER_RESET="0.5",
    )
    faults.script(then=Fault.error(503))
    for _ in range(3):
        status, _, _ = await proxy.request("POST", "/v1/cards", client="checkout", json=card_body())
        assert status == 502  # a partner 5xx is our 502 partner_error
    assert await metric(proxy, "tokenproxy_partner_circuit_state", partner="stripe") == 1
    status, body, resp = await proxy.request(
        "POST", "/v1/cards", client="checkout", json=card_body()
    )
    assert status == 503
    assert body is not None
    assert body["error"]["code"] == "partner_circuit_open"
    assert int(resp.headers["Retry-After"]) >= 1
    assert len(faults.payment_method_posts()) == 3
    # Half-open: a failing probe opens it again.
    await asyncio.sleep(0.6)
    status, body, _ = await proxy.request("POST", "/v1/cards", client="checkout", json=card_body())
    assert body is not None
    assert body["error"]["code"] != "partner_circuit_open"
    assert len(faults.payment_method_posts()) == 4
    status, body, _ = await proxy.request("POST", "/v1/cards", client="checkout", json=card_body())
    assert body is not None
    assert body["error"]["code"] == "partner_circuit_open"
    # Partner healthy again: the next probe closes the breaker.
    faults.script()
    await asyncio.sleep(0.6)
    status, _, _ = await proxy.request("POST", "/v1/cards", client="checkout", json=card_body())
    assert status == 201
    assert await metric(proxy, "tokenproxy_partner_circuit_state", partner="stripe") == 0
    assert (
        await metric(
            proxy,
            "tokenproxy_partner_attempts_total",
            partner="stripe",
            operation="create_card",
            outcome="circuit_open",
        )
        == 2
    )


def test_breaker_states_with_a_fake_clock() -> None:
    """Closed → open at the threshold; half-open after reset admits one probe at a time."""
    now = [0.0]
    breaker = CircuitBreaker(failures=2, reset_after=10, clock=lambda: now[0])
    breaker.failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.success()
    breaker.failure()
    assert breaker.state is CircuitState.CLOSED  # not consecutive
    breaker.failure()
    assert breaker.state is CircuitState.OPEN
    assert not breaker.acquire()
    assert breaker.retry_in() == 10
    now[0] = 10.0
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.acquire()
    assert not breaker.acquire()  # one probe at a time
    breaker.release()
    assert breaker.acquire()
    breaker.success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.acquire()


def test_declines_and_rate_limits_do_not_trip_the_breaker() -> None:
    """Only unhealthy outcomes count: declines and 429s leave the breaker closed."""
    from proxy.partners.resilience import _unhealthy

    assert not _unhealthy(PartnerDeclined("x"))
    assert not _unhealthy(PartnerUnavailable("x", code="partner_rate_limited", retryable=True))
    assert _unhealthy(PartnerTimeout("x", retryable=True))
    assert _unhealthy(PartnerError("x", retryable=True))


@given(
    retry=st.integers(min_value=0, max_value=30),
    base=st.floats(min_value=0, max_value=5),
    cap=st.floats(min_value=0, max_value=60),
    retry_after=st.none() | st.floats(min_value=0, max_value=3600),
)
def test_backoff_is_full_jitter_capped_and_respects_retry_after(
    retry: int, base: float, cap: float, retry_after: float | None
) -> None:
    """Delays lie in [0, min(cap, base*2^n)], raised to Retry-After when the partner asks."""
    policy = RetryPolicy(backoff_base=base, backoff_max=cap)
    delay = policy.delay(retry, retry_after)
    ceiling = min(cap, base * 2**retry)
    if retry_after is None:
        assert 0 <= delay <= ceiling
    else:
        assert retry_after <= delay <= max(ceiling, retry_after)


@given(
    retry=st.integers(min_value=0, max_value=30),
    retry_after=st.none() | st.floats(min_value=0, max_value=3600),
)
def test_a_429_backs_off_longer_and_never_near_zero(retry: int, retry_after: float | None) -> None:
    """After a 429 the delay is half to all of min(5 s, 0.5 s * 2^n), or Retry-After if more."""
    policy = RetryPolicy()
    delay = policy.delay(retry, retry_after, rate_limited=True)
    ceiling = min(policy.rate_limit_max, policy.rate_limit_base * 2.0**retry)
    assert max(ceiling / 2, retry_after or 0.0) <= delay <= max(ceiling, retry_after or 0.0)


async def test_a_429_is_retried_after_the_rate_limit_backoff(
    stripe_via_faults: StripePartner, faults: FaultProxy
) -> None:
    """The sleep after a 429 without Retry-After is at least half the 429 base, not 0-0.2 s."""
    sleeps = Sleeps()
    partner = ResilientPartner(stripe_via_faults, policy=RetryPolicy(), sleep=sleeps)
    faults.script(Fault.error(429))
    await partner.create_card(a_card(), idempotency_key="tp_429")
    assert len(sleeps.delays) == 1
    assert sleeps.delays[0] >= RetryPolicy().rate_limit_base / 2


class _Counting:
    """The real adapter, counting how many of its calls are in flight at once."""

    def __init__(self, inner: StripePartner) -> None:
        self.inner = inner
        self.name = inner.name
        self.livemode = inner.livemode
        self.now = 0
        self.most = 0

    async def create_card(
        self,
        card: CardRequest,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> object:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return await self.inner.create_card(
                card, idempotency_key=idempotency_key, metadata=metadata
            )
        finally:
            self.now -= 1


async def test_outbound_calls_are_limited_per_replica(
    stripe_via_faults: StripePartner, faults: FaultProxy
) -> None:
    """However many requests arrive, no more than max_in_flight partner calls run at once."""
    counting = _Counting(stripe_via_faults)
    partner = ResilientPartner(counting, max_in_flight=2)  # type: ignore[arg-type]
    faults.default = Fault.latency(0.05)
    created = await asyncio.gather(*(partner.create_card(a_card()) for _ in range(8)))
    assert len({c.reference for c in created}) == 8
    assert counting.most == 2


async def test_the_outbound_limit_is_the_setting(make_proxy: MakeProxy, faults: FaultProxy) -> None:
    """With TOKENPROXY_PARTNER_MAX_IN_FLIGHT=N, N+1 tokenizations at once reach a slow
    partner at most N at a time, and every one of them succeeds."""
    limit = 2
    proxy = await make_proxy(TOKENPROXY_PARTNER_MAX_IN_FLIGHT=str(limit))
    faults.default = Fault.latency(0.2)
    made = await asyncio.gather(
        *(create(proxy, "/v1/cards", card_body()) for _ in range(limit + 1))
    )
    assert len({m["token"] for m in made}) == limit + 1
    assert len(faults.payment_method_posts()) == limit + 1
    assert faults.in_flight == 0
    assert 1 <= faults.most_in_flight <= limit
