"""The client address behind trusted proxies: what limits, throttle, audit and logs key on."""

from __future__ import annotations

import io
import ipaddress
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenproxy_sandbox.launcher import Localstripe

from proxy.infra.settings import FORWARDED, X_FORWARDED_FOR, IPNetwork, Settings, SettingsError
from proxy.web import authguard
from proxy.web.clientaddr import MAX_HOPS, parse_address, resolve
from tests.conftest import SHOP, RunningProxy, add_shop_key, make_settings, running_proxy
from tests.core.test_invoices import invoice_body
from tests.helpers import rows

INGRESS = ipaddress.ip_network("10.0.0.0/8")
TRUSTED: tuple[IPNetwork, ...] = (INGRESS, ipaddress.ip_network("fd00::/8"))

# Addresses no trust list below covers: what shoppers come from.
_public_v4 = st.ip_addresses(v=4).filter(lambda a: a.is_global)
_public_v6 = st.ip_addresses(v=6).filter(lambda a: a.is_global and a.ipv4_mapped is None)
public = st.one_of(_public_v4, _public_v6)
ingress_hop = st.ip_addresses(network="10.0.0.0/8")
# What a client may write into the header before the ingress appends: anything printable.
client_written = st.lists(
    st.text(st.characters(codec="ascii", exclude_characters="\r\n\x00"), max_size=20),
    max_size=5,
)


def xff(*hops: object) -> str:
    """An X-Forwarded-For value from its hops, as proxies write it."""
    return ", ".join(str(h) for h in hops)


def forwarded_for(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """One RFC 7239 element for ``address``: IPv6 quoted and bracketed, with a port."""
    if address.version == 6:
        return f'for="[{address}]:4711";proto=https'
    return f"for={address};proto=https"


# ------------------------------------------------------------------ the rules, as properties


@settings(max_examples=200, deadline=None)
@given(
    peer=public,
    values=st.lists(st.text(max_size=60), max_size=3),
    forwarded=st.booleans(),
)
def test_headers_from_an_untrusted_peer_are_ignored(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address, values: list[str], forwarded: bool
) -> None:
    """Whatever an untrusted peer writes in a forwarding header, its own address is the client."""
    assert resolve(str(peer), values, TRUSTED, forwarded=forwarded) == str(peer)


@settings(max_examples=200, deadline=None)
@given(
    spoofed=client_written,
    shopper=public,
    hops=st.lists(ingress_hop, max_size=3),
    peer=ingress_hop,
)
def test_trusted_chain_yields_the_first_untrusted_hop_from_the_right(
    spoofed: list[str],
    shopper: ipaddress.IPv4Address | ipaddress.IPv6Address,
    hops: list[ipaddress.IPv4Address],
    peer: ipaddress.IPv4Address,
) -> None:
    """Behind trusted hops the shopper's address counts; what it wrote to its left never does."""
    chain = [*(s.replace(",", " ") for s in spoofed), str(shopper), *map(str, hops)]
    assert resolve(str(peer), [", ".join(chain)], TRUSTED, forwarded=False) == str(shopper)


@settings(max_examples=200, deadline=None)
@given(
    spoofed=st.lists(public, max_size=3),
    shopper=public,
    hops=st.lists(ingress_hop, max_size=3),
    peer=ingress_hop,
)
def test_forwarded_header_follows_the_same_rule(
    spoofed: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    shopper: ipaddress.IPv4Address | ipaddress.IPv6Address,
    hops: list[ipaddress.IPv4Address],
    peer: ipaddress.IPv4Address,
) -> None:
    """RFC 7239 Forwarded, quoted IPv6 with ports included, resolves as X-Forwarded-For does."""
    elements = [forwarded_for(a) for a in (*spoofed, shopper, *hops)]
    # Split across header lines as two proxies may write them: one list in order.
    cut = len(elements) // 2
    values = [", ".join(elements[:cut]), ", ".join(elements[cut:])] if cut else [elements[0]]
    assert resolve(str(peer), values, TRUSTED, forwarded=True) == str(shopper)


@settings(max_examples=100, deadline=None)
@given(hops=st.lists(ingress_hop, min_size=1, max_size=4), peer=ingress_hop)
def test_a_chain_of_trusted_hops_yields_where_it_began(
    hops: list[ipaddress.IPv4Address], peer: ipaddress.IPv4Address
) -> None:
    """An internal caller reaching us through our own proxies is the leftmost hop."""
    assert resolve(str(peer), [xff(*hops)], TRUSTED, forwarded=False) == str(hops[0])


@settings(max_examples=200, deadline=None)
@given(
    garbage=st.text(max_size=30).filter(lambda t: parse_address(t.split(",")[-1]) is None),
    hops=st.lists(ingress_hop, max_size=3),
    peer=ingress_hop,
)
def test_a_malformed_hop_among_trusted_ones_ignores_the_header(
    garbage: str, hops: list[ipaddress.IPv4Address], peer: ipaddress.IPv4Address
) -> None:
    """A hop that is no address before any untrusted one voids the header: the peer counts."""
    value = ", ".join([garbage, *map(str, hops)])
    assert resolve(str(peer), [value], TRUSTED, forwarded=False) == str(peer)


@settings(max_examples=300, deadline=None)
@given(address=st.ip_addresses(), port=st.integers(0, 65535))
def test_addresses_parse_in_every_written_form(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    """Bare, with a port, and bracketed IPv6 all name the same host (IPv4-mapped as IPv4)."""
    expected = address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        expected = address.ipv4_mapped
    forms = [str(address)]
    if address.version == 4:
        forms.append(f"{address}:{port}")
    else:
        forms += [f"[{address}]", f"[{address}]:{port}"]
    for form in forms:
        assert parse_address(form) == expected


@given(text=st.text(max_size=80))
def test_parsing_never_raises(text: str) -> None:
    """Any header text parses to an address or to None, never an exception."""
    parse_address(text)
    resolve("10.0.0.1", [text], TRUSTED, forwarded=True)
    resolve("10.0.0.1", [text], TRUSTED, forwarded=False)


@pytest.mark.parametrize(
    ("value", "forwarded"),
    [
        ("unknown", False),
        ("203.0.113.9:http", False),
        ("fe80::1%eth0", False),
        ("[2001:db8::1", False),
        ("203.0.113.9/24", False),
        ("", False),
        ("for=unknown", True),
        ("for=_hidden", True),
        ("proto=https", True),
        ("for=203.0.113.9;for=198.51.100.1", True),
        ("for", True),
        ('for="203.0.113.9', True),
    ],
)
def test_malformed_values_are_ignored(value: str, forwarded: bool) -> None:
    """A hop that names no single address (obfuscated, zoned, with a port name) counts as none."""
    assert resolve("10.1.2.3", [value], TRUSTED, forwarded=forwarded) == "10.1.2.3"


def test_long_chains_are_read_only_to_their_last_hops() -> None:
    """A client padding the header cannot make the walk longer than MAX_HOPS."""
    chain = ["10.0.0.1"] * (MAX_HOPS + 10)
    chain[0] = "203.0.113.9"  # beyond the window: never reached
    assert resolve("10.0.0.2", [xff(*chain)], TRUSTED, forwarded=False) == "10.0.0.1"


def test_no_peer_address_is_unknown() -> None:
    """A transport without a peer address keys as "unknown", headers or not."""
    assert resolve(None, ["203.0.113.9"], TRUSTED, forwarded=False) == "unknown"


# ------------------------------------------------------------------ settings


def _settings(**env: str) -> Settings:
    return Settings.from_env({"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1", **env})


def test_trusted_proxies_and_header_are_read() -> None:
    """CIDRs and single addresses are accepted; the header name in any case."""
    got = _settings(
        TOKENPROXY_TRUSTED_PROXIES="10.0.0.0/8, 192.0.2.7 ,fd00::/8",
        TOKENPROXY_FORWARDED_HEADER="forwarded",
    )
    assert [str(n) for n in got.trusted_proxies] == ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]
    assert got.forwarded_header == FORWARDED
    assert _settings().trusted_proxies == ()
    assert _settings().forwarded_header == X_FORWARDED_FOR


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENPROXY_TRUSTED_PROXIES", "10.0.0.1/8"),
        ("TOKENPROXY_TRUSTED_PROXIES", "ingress"),
        ("TOKENPROXY_TRUSTED_PROXIES", "10.0.0.0/8,,"),
        ("TOKENPROXY_TRUSTED_PROXIES", "0.0.0.0/0"),
        ("TOKENPROXY_TRUSTED_PROXIES", "::/0"),
        ("TOKENPROXY_FORWARDED_HEADER", "X-Real-IP"),
    ],
)
def test_bad_trust_settings_are_refused(name: str, value: str) -> None:
    """A host-bits typo, a name, an empty item, trusting all, or another header stop start-up."""
    with pytest.raises(SettingsError, match=name):
        _settings(**{name: value})


# ------------------------------------------------------------------ through the server


@pytest.fixture
def client_keys(client_keys: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The standard clients plus a publishable key bound to the shop."""
    return add_shop_key(client_keys, tmp_path)


def _env(trusted: str) -> dict[str, str]:
    env = {
        "TOKENPROXY_CORS_ORIGINS": SHOP,
        "TOKENPROXY_PUBLISHABLE_BURST": "2",
        "TOKENPROXY_PUBLISHABLE_RATE_PER_MINUTE": "1",
        "TOKENPROXY_AUTH_FAILURE_LIMIT": "2",
        "TOKENPROXY_AUTH_FAILURE_WINDOW": "3600",
        "TOKENPROXY_AUTH_FAILURE_AUDIT_INTERVAL": "3600",
    }
    if trusted:
        env["TOKENPROXY_TRUSTED_PROXIES"] = trusted
    return env


@pytest.fixture
async def behind_ingress(
    tmp_path: Path, keyring_path: Path, client_keys: dict[str, str], localstripe: Localstripe
) -> AsyncIterator[RunningProxy]:
    """A proxy that trusts loopback as its ingress."""
    settings_ = make_settings(tmp_path, keyring_path, localstripe.base_url, _env("127.0.0.0/8"))
    async with running_proxy(tmp_path, client_keys, settings_) as running:
        yield running


@pytest.fixture
async def exposed(
    tmp_path: Path, keyring_path: Path, client_keys: dict[str, str], localstripe: Localstripe
) -> AsyncIterator[RunningProxy]:
    """A proxy that trusts no proxy (loopback is just another client)."""
    settings_ = make_settings(tmp_path, keyring_path, localstripe.base_url, _env(""))
    async with running_proxy(tmp_path, client_keys, settings_) as running:
        yield running


async def _tokenize_empty(proxy: RunningProxy, shopper: str) -> int:
    status, _, _ = await proxy.request(
        "POST",
        "/v1/cards",
        client="shop",
        json={},
        headers={"Origin": SHOP, "X-Forwarded-For": f"198.51.100.200, {shopper}"},
    )
    return status


async def test_publishable_limit_is_per_shopper_behind_a_trusted_ingress(
    behind_ingress: RunningProxy,
) -> None:
    """Each shopper behind the ingress has a bucket; one shopper's 429 spares the next."""
    assert [await _tokenize_empty(behind_ingress, "203.0.113.1") for _ in range(3)] == [
        400,
        400,
        429,
    ]
    assert await _tokenize_empty(behind_ingress, "203.0.113.2") == 400


async def test_spoofed_header_from_an_untrusted_peer_shares_the_peer_bucket(
    exposed: RunningProxy,
) -> None:
    """A client that is no trusted proxy cannot buy fresh buckets by writing new addresses."""
    statuses = [await _tokenize_empty(exposed, f"203.0.113.{i}") for i in range(1, 4)]
    assert statuses == [400, 400, 429]


async def test_throttle_and_audit_record_the_forwarded_shopper(
    behind_ingress: RunningProxy, log_stream: io.StringIO
) -> None:
    """Failed keys are throttled and audited per shopper, by the address the ingress forwarded."""
    bad = {"Authorization": "Bearer tpk_wrong"}

    async def attempt(shopper: str) -> int:
        status, _, _ = await behind_ingress.request(
            "GET", "/v1/tokens/vtok_card_x", headers={**bad, "X-Forwarded-For": shopper}
        )
        return status

    assert [await attempt("203.0.113.5") for _ in range(3)] == [401, 401, 429]
    assert await attempt("2001:db8:1:2::5") == 401
    # The session's log (not structlog's capture_logs, which misses a logger another test
    # configured and cached): the request line names the shopper, not the ingress.
    start = len(log_stream.getvalue())
    assert await attempt("2001:db8:1:2::6") == 401  # the same /64: one source
    logged = [json.loads(line) for line in log_stream.getvalue()[start:].splitlines() if line]
    assert [e["address"] for e in logged if e.get("event") == "request"] == ["2001:db8:1:2::6"]
    assert await attempt("2001:db8:1:2::7") == 429
    await authguard.flush(behind_ingress.app)
    origins = {
        origin
        for (origin,) in rows(
            behind_ingress.vault_path,
            "SELECT origin FROM audit_events WHERE event_type = 'auth.failure'",
        )
    }
    assert origins == {"203.0.113.5", "2001:db8:1:2::/64"}


async def test_audit_origin_of_a_resolve_ignores_an_untrusted_header(exposed: RunningProxy) -> None:
    """A spoofed X-Forwarded-For from an untrusted peer never reaches the audit trail."""
    status, body, _ = await exposed.request(
        "POST", "/v1/invoices", client="invoicer", json=invoice_body()
    )
    assert status == 201, body
    assert body is not None
    status, _, _ = await exposed.request(
        "GET",
        f"/v1/tokens/{body['token']}",
        client="billing",
        headers={"X-Forwarded-For": "203.0.113.66", "Forwarded": "for=203.0.113.67"},
    )
    assert status == 200
    origins = rows(
        exposed.vault_path,
        "SELECT DISTINCT origin FROM audit_events WHERE event_type = 'token.resolve'",
    )
    assert origins == [("127.0.0.1",)]
