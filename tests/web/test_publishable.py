"""Origins, the publishable-key rate limiter, and publishable clients in the clients file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cli.main import main
from proxy.domain.origins import OriginError, parse_origin, parse_origin_list
from proxy.infra.clients import (
    PUBLISHABLE_SCOPES,
    ClientRegistry,
    ClientsFileError,
    add_client,
    parse_scopes,
    read_entries,
)
from proxy.infra.settings import Settings, SettingsError
from proxy.web.publishable import TokenBucketLimiter

# ------------------------------------------------------------------------ origins


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://shop.example", "https://shop.example"),
        ("HTTPS://Shop.Example", "https://shop.example"),
        ("https://shop.example:443", "https://shop.example"),
        ("http://shop.example:80/", "http://shop.example"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("  https://shop.example  ", "https://shop.example"),
    ],
)
def test_origin_normalised_like_a_browser(value: str, expected: str) -> None:
    """Allowlist entries are serialised as browsers send Origin: lower case, no default port."""
    assert parse_origin(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "https://*.shop.example",
        "null",
        "",
        "shop.example",
        "ftp://shop.example",
        "https://shop.example/checkout",
        "https://shop.example?x=1",
        "https://shop.example#x",
        "https://user@shop.example",
        "https://shop.example:99999",
        "https://sh_op.example",
        "https://",
    ],
)
def test_origin_refused(value: str) -> None:
    """Wildcards, null, paths, user info, bad ports and hosts are not origins."""
    with pytest.raises(OriginError):
        parse_origin(value)


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "Https"]),
    labels=st.lists(_label, min_size=1, max_size=4),
    port=st.one_of(st.none(), st.integers(min_value=1, max_value=65535)),
)
def test_origin_normalisation_is_idempotent(
    scheme: str, labels: list[str], port: int | None
) -> None:
    """Any accepted origin parses to itself again, so the allowlist compares stably."""
    value = f"{scheme}://{'.'.join(labels)}" + (f":{port}" if port is not None else "")
    origin = parse_origin(value)
    assert parse_origin(origin) == origin
    assert origin == origin.lower()
    assert origin.count("/") == 2


@given(st.text(max_size=40).map(lambda t: f"https://{t}*"))
def test_origin_with_wildcard_never_accepted(value: str) -> None:
    """No string with a * in it is ever accepted as an origin."""
    with pytest.raises(OriginError):
        parse_origin(value)


def test_origin_list_dedupes_and_keeps_order() -> None:
    """The settings list drops blanks and duplicates and keeps the operator's order."""
    assert parse_origin_list("https://b.example, ,https://a.example,HTTPS://B.example") == (
        "https://b.example",
        "https://a.example",
    )


@pytest.mark.parametrize(
    "value", ["*", "https://shop.example/pay", "https://shop.example,https://*.example"]
)
def test_settings_refuse_wildcard_or_path_origins(value: str) -> None:
    """TOKENPROXY_CORS_ORIGINS with a wildcard or a path stops start-up naming the setting."""
    with pytest.raises(SettingsError, match="TOKENPROXY_CORS_ORIGINS"):
        Settings.from_env(
            {"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1", "TOKENPROXY_CORS_ORIGINS": value}
        )


def test_settings_parse_cors_and_rate_limit() -> None:
    """The CORS list is normalised; rate and burst are read and validated."""
    s = Settings.from_env(
        {
            "TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1",
            "TOKENPROXY_CORS_ORIGINS": "https://Shop.example:443,http://127.0.0.1:3000",
            "TOKENPROXY_PUBLISHABLE_RATE_PER_MINUTE": "12",
            "TOKENPROXY_PUBLISHABLE_BURST": "4",
        }
    )
    assert s.cors_origins == ("https://shop.example", "http://127.0.0.1:3000")
    assert (s.publishable_rate_per_minute, s.publishable_burst) == (12.0, 4)
    assert Settings().cors_origins == ()
    with pytest.raises(SettingsError, match="TOKENPROXY_PUBLISHABLE_BURST"):
        Settings.from_env(
            {"TOKENPROXY_STRIPE_API_BASE": "http://x", "TOKENPROXY_PUBLISHABLE_BURST": "0"}
        )


# ------------------------------------------------------------------- rate limiter


class FakeClock:
    """A clock the test moves by hand (time itself is not under test)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_refuses_until_refilled() -> None:
    """Burst requests pass at once; the next waits 1/rate; after that wait one more passes."""
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate_per_second=0.5, burst=3, clock=clock)
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("k")
    assert wait == pytest.approx(2.0)
    assert limiter.take("other") == 0.0
    clock.now += wait
    assert limiter.take("k") == 0.0
    assert limiter.take("k") > 0


def test_bucket_count_is_bounded() -> None:
    """The limiter forgets least recently used buckets beyond its bound."""
    limiter = TokenBucketLimiter(rate_per_second=1, burst=1, max_buckets=10, clock=FakeClock())
    for i in range(100):
        limiter.take(i)
    assert len(limiter) == 10


@settings(max_examples=200)
@given(
    rate=st.floats(min_value=0.01, max_value=50),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=200),
)
def test_bucket_never_allows_more_than_burst_plus_refill(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Over any stretch of time, allowed requests <= burst + rate * elapsed."""
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate_per_second=rate, burst=burst, clock=clock)
    start = clock.now
    allowed = 0
    for gap in gaps:
        clock.now += gap
        wait = limiter.take("k")
        assert wait >= 0
        if wait == 0:
            allowed += 1
        assert allowed <= burst + rate * (clock.now - start) + 1e-6


@given(rate=st.floats(min_value=0.01, max_value=50), burst=st.integers(min_value=1, max_value=5))
def test_bucket_wait_is_honest(rate: float, burst: int) -> None:
    """Waiting exactly the time the limiter names is enough for the next request."""
    clock = FakeClock()
    limiter = TokenBucketLimiter(rate_per_second=rate, burst=burst, clock=clock)
    while (wait := limiter.take("k")) == 0:
        pass
    clock.now += wait * (1 + 1e-9)
    assert limiter.take("k") == 0


# ---------------------------------------------------------- publishable clients


def test_publishable_client_round_trips(tmp_path: Path) -> None:
    """A pk_ key is stored hashed with its kind and origins and authenticates as publishable."""
    path = tmp_path / "clients.json"
    secret = add_client(path, "billing", parse_scopes("resolve"))
    key = add_client(
        path,
        "shop",
        PUBLISHABLE_SCOPES,
        publishable=True,
        origins=frozenset({"HTTPS://Shop.example"}),
    )
    assert key.startswith("pk_")
    doc = json.loads(path.read_text())
    assert key not in path.read_text()
    assert doc["clients"][1]["kind"] == "publishable"
    assert doc["clients"][1]["origins"] == ["https://shop.example"]
    assert "created_at" in doc["clients"][0]  # earlier entries are kept as written
    registry = ClientRegistry.load(path)
    client = registry.authenticate(key)
    assert client is not None
    assert client.publishable
    assert client.origins == frozenset({"https://shop.example"})
    billing = registry.authenticate(secret)
    assert billing is not None
    assert not billing.publishable


def test_clients_file_without_kind_reads_as_secret(tmp_path: Path) -> None:
    """A clients file written before publishable keys existed still loads, all secret."""
    path = tmp_path / "clients.json"
    path.write_text(
        json.dumps(
            {
                "format": "tokenproxy-clients/1",
                "clients": [{"name": "old", "scopes": ["read"], "key_sha256": "a" * 64}],
            }
        )
    )
    (entry,) = read_entries(path)
    client = entry.client
    assert not client.publishable
    assert client.origins == frozenset()


@pytest.mark.parametrize(
    "entry",
    [
        {"kind": "publishable", "scopes": ["tokenize", "read"], "origins": ["https://a.example"]},
        {"kind": "publishable", "scopes": ["tokenize"], "origins": []},
        {"kind": "publishable", "scopes": ["tokenize"], "origins": ["https://*.example"]},
        {"kind": "publishable", "scopes": ["tokenize"], "origins": ["HTTPS://A.example"]},
        {"kind": "secret", "scopes": ["read"], "origins": ["https://a.example"]},
        {"kind": "superuser", "scopes": ["read"]},
    ],
)
def test_hand_edited_publishable_entries_refused(tmp_path: Path, entry: dict[str, object]) -> None:
    """A publishable entry with more than tokenize, no or bad origins, or an odd kind fails."""
    path = tmp_path / "clients.json"
    path.write_text(
        json.dumps(
            {
                "format": "tokenproxy-clients/1",
                "clients": [{"name": "x", "key_sha256": "b" * 64, **entry}],
            }
        )
    )
    with pytest.raises(ClientsFileError, match=r"clients\.json"):
        ClientRegistry.load(path)


def test_add_client_refuses_publishable_with_more_power(tmp_path: Path) -> None:
    """add_client refuses a publishable key with extra scopes or without origins."""
    path = tmp_path / "clients.json"
    with pytest.raises(ValueError, match="publishable"):
        add_client(
            path,
            "shop",
            parse_scopes("tokenize,read"),
            publishable=True,
            origins=frozenset({"https://a.example"}),
        )
    with pytest.raises(ValueError, match="publishable"):
        add_client(path, "shop", PUBLISHABLE_SCOPES, publishable=True)
    with pytest.raises(ValueError, match="origins"):
        add_client(path, "svc", PUBLISHABLE_SCOPES, origins=frozenset({"https://a.example"}))


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CLI settings pointing at the test directory (key ring made), one CORS origin configured."""
    monkeypatch.setenv("TOKENPROXY_CLIENTS", str(tmp_path / "clients.json"))
    monkeypatch.setenv("TOKENPROXY_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("TOKENPROXY_CORS_ORIGINS", "https://shop.example")
    # clients add writes an audit event into the vault, which needs the key ring.
    monkeypatch.setenv("TOKENPROXY_VAULT_URL", f"sqlite:///{tmp_path / 'vault.db'}")
    assert main(["keys", "init"]) == 0
    return tmp_path


def test_cli_adds_publishable_client(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """clients add --publishable --origins prints a pk_ key and notes origins missing from CORS."""
    argv = ["clients", "add", "shop", "--publishable", "--origins"]
    assert main([*argv, "https://shop.example,https://m.shop.example"]) == 0
    out = capsys.readouterr().out
    key = out.strip().splitlines()[-1]
    assert key.startswith("pk_")
    assert "TOKENPROXY_CORS_ORIGINS" in out
    assert "https://m.shop.example" in out
    client = ClientRegistry.load(cli_env / "clients.json").authenticate(key)
    assert client is not None
    assert client.publishable


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--publishable"], "--origins"),
        (["--publishable", "--origins", "https://*.example"], "wildcard"),
        (["--publishable", "--scopes", "read", "--origins", "https://a.example"], "tokenize"),
        (["--scopes", "read", "--origins", "https://a.example"], "--publishable"),
        ([], "--scopes"),
    ],
)
def test_cli_refuses_bad_publishable_input(
    cli_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Missing or bad origins, extra scopes, or origins on a secret key are refused."""
    assert main(["clients", "add", "shop", *argv]) == 2
    assert message in capsys.readouterr().err
