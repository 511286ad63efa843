"""Failed authentications: throttled per source with 429, audited as bounded aggregates."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.audit import append_event
from proxy.infra.settings import Settings, SettingsError
from proxy.web import authguard
from proxy.web.authguard import FailureTallies, FailureThrottle, Tally
from proxy.web.clientaddr import resolve
from tests.conftest import RunningProxy, make_settings, running_proxy
from vault import Vault

BAD = {"Authorization": "Bearer tpk_wrong"}
LIMIT = 3


@pytest.fixture
def proxy_env() -> dict[str, str]:
    """A small failure limit so the throttle is reachable; a long audit interval."""
    return {
        "TOKENPROXY_AUTH_FAILURE_LIMIT": str(LIMIT),
        "TOKENPROXY_AUTH_FAILURE_WINDOW": "3600",
        "TOKENPROXY_AUTH_FAILURE_AUDIT_INTERVAL": "3600",
    }


def auth_rows(path: Path) -> list[tuple[object, ...]]:
    """The auth.failure events in the vault file: (actor, origin, detail as a dict)."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT actor, origin, detail FROM audit_events WHERE event_type = 'auth.failure'"
            " ORDER BY seq"
        ).fetchall()
    finally:
        db.close()
    return [(actor, origin, json.loads(detail)) for actor, origin, detail in rows]


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_refuses_after_the_limit_until_the_window_ends() -> None:
    """After `limit` failures a source waits out the rest of its window; others do not."""
    clock = Clock()
    throttle = FailureThrottle(3, 60.0, max_sources=10, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") == 0.0
        throttle.failed("10.0.0.1")
    clock.now += 20
    assert throttle.retry_after("10.0.0.1") == pytest.approx(40.0)
    assert throttle.retry_after("10.0.0.2") == 0.0
    clock.now += 40
    assert throttle.retry_after("10.0.0.1") == 0.0
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 0.0


@settings(max_examples=100, deadline=None)
@given(sources=st.lists(st.text(min_size=1, max_size=8), max_size=300), cap=st.integers(1, 20))
def test_throttle_table_never_outgrows_its_cap(sources: list[str], cap: int) -> None:
    """However many source addresses fail, the table holds at most max_sources entries."""
    throttle = FailureThrottle(2, 60.0, max_sources=cap, clock=Clock())
    for source in sources:
        throttle.failed(source)
        assert len(throttle) <= cap


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 50), st.sampled_from(["missing_key", "invalid_key"])),
        max_size=300,
    ),
    cap=st.integers(1, 10),
)
def test_tallies_are_bounded_and_lose_no_count(events: list[tuple[int, str]], cap: int) -> None:
    """Tallies never exceed cap plus one overflow entry, and the counts add up to every
    refusal, including after a failed write put them back."""
    tallies = FailureTallies(cap)
    for source, reason in events[: len(events) // 2]:
        tallies.add(f"10.0.0.{source}", None, reason, "/v1/cards")
    unwritten = tallies.take()
    for source, reason in events[len(events) // 2 :]:
        tallies.add(f"10.0.0.{source}", None, reason, "/v1/cards")
        assert len(tallies) <= cap + 1
    tallies.restore(unwritten)
    taken = tallies.take()
    assert sum(sum(t.reasons.values()) for t in taken.values()) == len(events)
    assert len(tallies) == 0


def test_tally_detail_counts_each_reason() -> None:
    """The aggregated event says how many refusals of each reason, when, and where."""
    tally = Tally(first_at="2026-01-01T00:00:00.000000Z", last_at="2026-01-01T00:00:00.000000Z")
    tally.add("invalid_key", "/v1/cards", "2026-01-01T00:00:05.000000Z")
    tally.add("invalid_key", "/v1/tokens/{token}", "2026-01-01T00:00:09.000000Z")
    tally.add("throttled", "/v1/cards", "2026-01-01T00:00:07.000000Z")
    assert tally.detail() == {
        "count": 3,
        "first_at": "2026-01-01T00:00:00.000000Z",
        "last_at": "2026-01-01T00:00:09.000000Z",
        "route": "several",
        "invalid_key": 2,
        "throttled": 1,
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENPROXY_AUTH_FAILURE_LIMIT", "0"),
        ("TOKENPROXY_AUTH_FAILURE_WINDOW", "0.5"),
        ("TOKENPROXY_AUTH_FAILURE_MAX_SOURCES", "0"),
        ("TOKENPROXY_AUTH_FAILURE_AUDIT_INTERVAL", "0"),
        ("TOKENPROXY_AUDIT_RETENTION_DAYS", "364"),
        ("TOKENPROXY_AUDIT_RETENTION_DAYS", "30"),
    ],
)
def test_out_of_range_settings_are_refused(name: str, value: str) -> None:
    """A throttle that cannot work, or an audit retention under 12 months, stops start-up."""
    env = {"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1", name: value}
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


async def test_repeated_failures_get_429_with_retry_after(proxy: RunningProxy) -> None:
    """Past the limit a source gets 429 auth_throttled with Retry-After, even with a valid
    key, and the metric counts each throttled request."""
    for _ in range(LIMIT):
        status, _, _ = await proxy.request("GET", "/v1/customers/c1/tokens", headers=BAD)
        assert status == 401
    status, body, resp = await proxy.request("GET", "/v1/customers/c1/tokens", headers=BAD)
    assert status == 429
    assert body is not None
    assert body["error"]["code"] == "auth_throttled"  # type: ignore[index]
    assert 1 <= int(resp.headers["Retry-After"]) <= 3600
    status, _, _ = await proxy.request("GET", "/v1/customers/c1/tokens", client="orders")
    assert status == 429
    assert b"tpk_wrong" not in b"".join(proxy.responses)
    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        text = await resp.text()
    assert "tokenproxy_auth_throttled_total 2.0" in text


async def test_missing_scope_is_not_throttled(proxy: RunningProxy) -> None:
    """A known client lacking a scope is refused with 403 each time, never locked out."""
    for _ in range(LIMIT * 3):
        status, _, _ = await proxy.request("GET", "/v1/customers/c1/tokens", client="checkout")
        assert status == 403


async def test_a_flood_costs_one_row_per_source(proxy: RunningProxy) -> None:
    """Sixty bad-key requests from one address are one auth.failure event with their count."""
    statuses = []
    for _ in range(60):
        statuses.append((await proxy.request("POST", "/v1/cards", headers=BAD))[0])
    assert statuses == [401] * LIMIT + [429] * (60 - LIMIT)
    assert auth_rows(proxy.vault_path) == []  # nothing yet: the interval has not ended
    assert await authguard.flush(proxy.app) == 1
    ((actor, origin, detail),) = auth_rows(proxy.vault_path)
    assert (actor, origin) == (None, "127.0.0.1")
    assert detail["count"] == 60
    assert (detail["invalid_key"], detail["throttled"]) == (LIMIT, 60 - LIMIT)
    assert detail["route"] == "/v1/cards"
    assert await authguard.flush(proxy.app) == 0


async def test_unwritten_tallies_are_kept_for_the_next_flush(proxy: RunningProxy) -> None:
    """When the audit store refuses a flush, the counts wait and land with the next one."""
    await proxy.request("GET", "/v1/customers/c1/tokens", headers=BAD)
    db = sqlite3.connect(proxy.vault_path)
    db.execute(
        "CREATE TRIGGER audit_broken BEFORE INSERT ON audit_events"
        " BEGIN SELECT RAISE(ABORT, 'audit store full'); END"
    )
    db.commit()
    assert await authguard.flush(proxy.app) == 0
    await proxy.request("GET", "/v1/customers/c1/tokens", headers=BAD)
    db.execute("DROP TRIGGER audit_broken")
    db.commit()
    db.close()
    assert await authguard.flush(proxy.app) == 1
    ((_, _, detail),) = auth_rows(proxy.vault_path)
    assert detail["count"] == 2


async def test_shutdown_writes_the_last_tallies(
    tmp_path: Path, keyring_path: Path, client_keys: dict[str, str], localstripe: object
) -> None:
    """Failures tallied before shutdown are written before the vault closes."""
    settings = make_settings(
        tmp_path,
        keyring_path,
        localstripe.base_url,  # type: ignore[attr-defined]
        {"TOKENPROXY_AUTH_FAILURE_AUDIT_INTERVAL": "3600"},
    )
    async with running_proxy(tmp_path, client_keys, settings) as proxy:
        for _ in range(5):
            await proxy.request("GET", "/v1/customers/c1/tokens", headers=BAD)
        assert auth_rows(proxy.vault_path) == []
    ((_, _, detail),) = auth_rows(tmp_path / "vault.db")
    assert detail["invalid_key"] == 5


async def test_card_like_origin_is_recorded_as_its_digest(vault: Vault) -> None:
    """An origin the card-number check refuses is recorded as its keyed digest instead."""
    await append_event(
        vault, "auth.failure", outcome=False, actor=None, origin="4242:4242:4242:4242::/64"
    )
    await append_event(
        vault, "auth.failure", outcome=False, actor=None, origin="4242 4242 4242 4242"
    )
    events = await vault.audit.events()
    assert [e.entry.origin for e in events][1] == vault.audit.digest(
        "origin", "4242 4242 4242 4242"
    )
    assert all("4242 4242" not in str(e.entry) for e in events)


def test_ipv6_sources_are_grouped_by_64() -> None:
    """Every address of one IPv6 /64 is one source; IPv4 and mapped IPv4 are themselves."""

    def source(remote: str | None) -> str:
        return authguard.source_key(resolve(remote, [], (), forwarded=False))

    assert source("2001:db8:1:2:aaaa::1") == source("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source("2001:db8:1:3::1") != source("2001:db8:1:2::1")
    assert source("192.0.2.7") == source("::ffff:192.0.2.7") == "192.0.2.7"
    assert source(None) == "unknown"
