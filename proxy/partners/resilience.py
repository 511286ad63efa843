"""Retries, backoff and a circuit breaker around any partner adapter.

This is the proxy's one retry layer: a use case calls a partner operation once and
leaves retrying to it, so the bounds below are the bounds of the whole request (a
second loop above this one would multiply them).

Stripe's rules are the anchor: a call may be retried only after a network error, a
409, a 429 (after its Retry-After) or a 5xx, and every retry carries the *same*
idempotency key so the partner replays its first answer instead of creating a second
payment method. Card errors and other 4xx are final. One exception: Stripe saves a 5xx
answer against its idempotency key and replays it to every retry with that key for at
least a day (https://docs.stripe.com/api/idempotent_requests), so after a 5xx the
partner answered the next attempt goes out under a fresh key; an extra unattached
PaymentMethod, if the first attempt made one, is harmless and never charged. Retries
are bounded in count and in total time, and sleep an exponentially growing, fully
jittered delay (AWS "Exponential Backoff and Jitter":
``uniform(0, min(cap, base * 2**n))``) so a fleet of proxies does not retry in lock step.

The circuit breaker stops a dead partner from holding every request for its full
timeout: after ``failures`` consecutive unhealthy attempts it opens and answers
``503 partner_circuit_open`` at once; after ``reset_after`` seconds it lets one probe
through (half-open); a healthy probe closes it, an unhealthy one opens it again.
Only partner *health* failures count (network errors, timeouts, 5xx): a declined
card, a 429 or a 409 for a key Stripe is still working on says nothing about whether
the partner is up.
"""

from __future__ import annotations

import asyncio
import enum
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from proxy.domain.bank import BankAccountRequest, MandateAcceptance
from proxy.domain.errors import PartnerError, PartnerTimeout, PartnerUnavailable
from proxy.domain.requests import CardRequest
from proxy.infra.metrics import Metrics
from proxy.partners.budget import OutboundBudget
from proxy.partners.ports import (
    Partner,
    PartnerBankAccount,
    PartnerCard,
    PartnerPaymentMethod,
    PartnerSetup,
)

T = TypeVar("T")
_log = structlog.get_logger("tokenproxy.partner")


def fresh_partner_key(key: str) -> str:
    """A new partner key for a call whose key Stripe holds a 5xx for (kept under 255)."""
    return key[:200] + "_r" + secrets.token_urlsafe(8)


def new_partner_key() -> str:
    """A per-request partner idempotency key for calls that came without a client key.

    It lives only for one request, but makes the proxy's own retries of that request
    safe: the partner replays its first answer rather than create a second card. Base64url,
    not hex: an outbox row's key goes into the audit trail, which refuses a value holding
    a Luhn-valid run of 13+ digits, and about one 32-character hex key in 500 holds one.
    """
    return "tp_" + secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry a partner call."""

    max_retries: int = 2
    budget: float = 20.0
    backoff_base: float = 0.2
    backoff_max: float = 2.0

    # A 429 says the account's rate is spent for now: wait longer than for a blip, and
    # never near zero, or every replica's retries land in the same second again.
    rate_limit_base: float = 0.5
    rate_limit_max: float = 5.0

    def delay(self, retry: int, retry_after: float | None, *, rate_limited: bool = False) -> float:
        """The sleep before retry number ``retry`` (0-based): jittered, at least Retry-After.

        After a 429 the delay grows from ``rate_limit_base`` and is jittered between half
        and all of it, as Stripe's own SDKs do ("exponential backoff of your requests",
        https://docs.stripe.com/rate-limits#handling-limiting-gracefully).
        """
        if rate_limited:
            cap = min(self.rate_limit_max, self.rate_limit_base * 2.0**retry)
            jitter = cap * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
        else:
            cap = min(self.backoff_max, self.backoff_base * (2**retry))
            jitter = random.uniform(0, cap)  # noqa: S311 - jitter, not a secret
        return max(jitter, retry_after or 0.0)


# With Stripe's typical 0.2-0.4 s per call, 32 at once is about Stripe's live default of
# 100 operations a second per account.
DEFAULT_MAX_IN_FLIGHT = 32


class CircuitState(enum.IntEnum):
    """Gauge values of ``tokenproxy_partner_circuit_state``."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a single half-open probe."""

    def __init__(
        self,
        *,
        failures: int = 5,
        reset_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.failures = failures
        self.reset_after = reset_after
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker past its reset time reads as half-open)."""
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self.reset_after:
            self._set(CircuitState.HALF_OPEN)
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        return max(0.0, self.reset_after - (self._clock() - self._opened_at))

    def acquire(self) -> bool:
        """May a call go out now? In half-open state only one probe at a time may."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        """A healthy answer: close the breaker."""
        self._probing = False
        self._consecutive = 0
        if self._state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def failure(self) -> None:
        """An unhealthy answer: count it; open on the threshold or a failed probe."""
        self._consecutive += 1
        if self._state is CircuitState.HALF_OPEN or self._consecutive >= self.failures:
            self._probing = False
            self._opened_at = self._clock()
            self._set(CircuitState.OPEN)

    def release(self) -> None:
        """A call that said nothing about health (a decline, a 429): free the probe slot."""
        self._probing = False

    def _set(self, state: CircuitState) -> None:
        if state is not self._state:
            self._state = state
            _log.warning("partner_circuit", state=state.name.lower())
        if self._on_change is not None:
            self._on_change(state)


def _unhealthy(exc: PartnerError) -> bool:
    """Failures that say the partner is down or broken (not a decline, not rate limiting)."""
    return isinstance(exc, PartnerTimeout) or (
        exc.retryable and exc.code not in {"partner_rate_limited", "partner_busy"}
    )


class ResilientPartner:
    """A Partner that retries by Stripe's rules and trips a circuit breaker; wraps any Partner."""

    def __init__(
        self,
        inner: Partner,
        *,
        policy: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        metrics: Metrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        budget: OutboundBudget | None = None,
    ) -> None:
        self.inner = inner
        # Calls a second, shared by the replicas when the vault's database shares limits
        # (TOKENPROXY_PARTNER_RATE; see proxy.partners.budget). Each attempt spends one.
        self.budget = budget
        # Calls to the partner at once from this process (TOKENPROXY_PARTNER_MAX_IN_FLIGHT);
        # the rest wait their turn here rather than meet Stripe's rate limiter (100
        # operations/s per account in live mode, https://docs.stripe.com/rate-limits).
        self._slots = asyncio.Semaphore(max_in_flight)
        self.name = inner.name
        self.livemode = getattr(inner, "livemode", None)
        self.policy = policy or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self._metrics = metrics
        self._sleep = sleep
        if metrics is not None:
            gauge = metrics.partner_circuit_state.labels(self.name)
            gauge.set(int(self.breaker.state))
            self.breaker._on_change = lambda state: gauge.set(int(state))

    async def create_card(
        self,
        card: CardRequest,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PartnerCard:
        """Create a card at the partner, retrying with one idempotency key for all attempts."""
        return await self._keyed(
            "create_card",
            idempotency_key,
            lambda key: self.inner.create_card(card, idempotency_key=key, metadata=metadata),
        )

    async def create_sepa_debit(
        self,
        account: BankAccountRequest,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PartnerBankAccount:
        """Create a SEPA debit method, one idempotency key for all attempts."""
        return await self._keyed(
            "create_sepa_debit",
            idempotency_key,
            lambda key: self.inner.create_sepa_debit(
                account, idempotency_key=key, metadata=metadata
            ),
        )

    async def create_customer(self, *, idempotency_key: str | None = None) -> str:
        """Create a partner customer, one idempotency key for all attempts."""
        return await self._keyed(
            "create_customer",
            idempotency_key,
            lambda key: self.inner.create_customer(idempotency_key=key),
        )

    # Attach, detach and delete carry no idempotency key and need none: attaching to the
    # same customer again changes nothing, and a detach or delete repeated after a lost
    # answer finds the object already gone, which the adapters report as False rather
    # than an error. Erasure and token deletion rely on these retries.
    async def delete_customer(self, reference: str) -> bool:
        """Delete a partner customer."""
        return await self._call("delete_customer", lambda: self.inner.delete_customer(reference))

    async def attach(self, payment_method: str, customer: str) -> None:
        """Attach a payment method to a customer."""
        await self._call("attach", lambda: self.inner.attach(payment_method, customer))

    async def setup_off_session(
        self,
        payment_method: str,
        customer: str,
        *,
        kind: str,
        mandate: MandateAcceptance | None = None,
        return_url: str | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PartnerSetup:
        """Set a payment method up for off-session use, one idempotency key for all attempts."""
        return await self._keyed(
            "setup",
            idempotency_key,
            lambda key: self.inner.setup_off_session(
                payment_method,
                customer,
                kind=kind,
                mandate=mandate,
                return_url=return_url,
                idempotency_key=key,
                metadata=metadata,
            ),
        )

    async def get_setup(self, intent: str) -> PartnerSetup:
        """Read a setup's state (a read: safe to repeat)."""
        return await self._call("get_setup", lambda: self.inner.get_setup(intent))

    async def detach(self, payment_method: str) -> bool:
        """Detach a payment method."""
        return await self._call("detach", lambda: self.inner.detach(payment_method))

    async def list_payment_methods(self, customer: str, *, kind: str) -> list[PartnerPaymentMethod]:
        """List a customer's payment methods of one type (a read: safe to retry)."""
        return await self._call(
            "list_payment_methods", lambda: self.inner.list_payment_methods(customer, kind=kind)
        )

    async def get_payment_method(self, reference: str) -> PartnerPaymentMethod | None:
        """Retrieve a payment method (a read: safe to retry)."""
        return await self._call(
            "get_payment_method", lambda: self.inner.get_payment_method(reference)
        )

    async def count_subscriptions(self, customer: str) -> int:
        """Count a customer's open subscriptions (a read: safe to retry)."""
        return await self._call(
            "count_subscriptions", lambda: self.inner.count_subscriptions(customer)
        )

    async def _keyed(
        self, operation: str, key: str | None, attempt: Callable[[str], Awaitable[T]]
    ) -> T:
        """A call under a partner idempotency key: the same key for every retry, except
        after a 5xx the partner answered (it would replay that 5xx), then a fresh one."""
        base = current = key or new_partner_key()

        def after(exc: PartnerError) -> None:
            nonlocal current
            if exc.partner_status is not None and exc.partner_status >= 500:
                current = fresh_partner_key(base)

        return await self._call(operation, lambda: attempt(current), after_failure=after)

    async def _call(
        self,
        operation: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        after_failure: Callable[[PartnerError], None] | None = None,
    ) -> T:
        started = time.monotonic()
        retry = 0
        while True:
            if not self.breaker.acquire():
                self._count(operation, "circuit_open")
                raise PartnerUnavailable(
                    "The payment partner is failing; the proxy is not sending it requests for now.",
                    code="partner_circuit_open",
                    headers={"Retry-After": str(max(1, round(self.breaker.retry_in())))},
                )
            if self.budget is not None:
                try:
                    await self.budget.take()
                except PartnerUnavailable as exc:
                    # Never sent: says nothing of the partner's health, and a retry here
                    # would only wait longer for the same budget.
                    self._count(operation, exc.code)
                    if self._metrics is not None:
                        self._metrics.partner_budget_exhausted.labels(self.name).inc()
                    _log.warning("partner_budget_exhausted", operation=operation)
                    raise
            try:
                async with self._slots:
                    result = await attempt()
            except PartnerError as exc:
                if _unhealthy(exc):
                    self.breaker.failure()
                else:
                    self.breaker.release()
                self._count(operation, exc.code)
                # A key in use is waited out (within the time budget), not counted: its
                # first request, another replica's racing on a derived key, will answer.
                # With retries switched off (0) there is no waiting at all.
                waits_out = exc.code == "partner_busy" and self.policy.max_retries > 0
                if not exc.retryable or (retry >= self.policy.max_retries and not waits_out):
                    raise
                delay = self.policy.delay(
                    retry, exc.retry_after, rate_limited=exc.code == "partner_rate_limited"
                )
                if time.monotonic() - started + delay > self.policy.budget:
                    # Out of time: give the client the partner's own hint, if any.
                    raise
                retry += 1
                if after_failure is not None:
                    after_failure(exc)
                if self._metrics is not None:
                    self._metrics.child(
                        self._metrics.partner_retries, self.name, operation, exc.code
                    ).inc()
                _log.info("partner_retry", operation=operation, code=exc.code, retry=retry)
                await self._sleep(delay)
            else:
                self.breaker.success()
                self._count(operation, "ok")
                return result

    def _count(self, operation: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.partner_attempts, self.name, operation, outcome).inc()

    async def close(self) -> None:
        """Close the wrapped adapter."""
        await self.inner.close()
