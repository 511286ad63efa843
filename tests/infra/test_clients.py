"""The clients file and registry: old files load, reloads swap whole, rotation and removal."""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.cli.main import build_parser, main
from proxy.infra.clients import (
    SCOPES,
    ClientRegistry,
    ClientsFileError,
    add_client,
    digest,
    parse_grace,
    parse_scopes,
    parse_time,
    read_entries,
    remove_client,
    rotate_client,
)

OLD_KEY = "tpk_" + "k" * 43
OLD_PK = "pk_" + "p" * 43
# A file as written before rotation existed (and one entry from before created_at/kind).
OLD_FILE = {
    "format": "tokenproxy-clients/1",
    "clients": [
        {"name": "legacy", "scopes": ["resolve"], "key_sha256": digest(OLD_KEY)},
        {
            "name": "shop",
            "scopes": ["tokenize"],
            "key_sha256": digest(OLD_PK),
            "kind": "publishable",
            "origins": ["https://shop.example"],
            "created_at": "2026-01-01T00:00:00+00:00",
        },
    ],
}


class Clock:
    """A settable wall clock for the registry."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clients_file(tmp_path: Path) -> Path:
    """A clients file in the format the previous release wrote."""
    path = tmp_path / "clients.json"
    path.write_text(json.dumps(OLD_FILE, indent=2))
    return path


def test_files_written_before_rotation_still_load(clients_file: Path) -> None:
    """A file without previous_keys (or created_at, or kind) loads and its keys work."""
    registry = ClientRegistry.load(clients_file)
    legacy = registry.authenticate(OLD_KEY)
    assert legacy is not None
    assert legacy.name == "legacy"
    shop = registry.authenticate(OLD_PK)
    assert shop is not None
    assert shop.publishable
    assert [e.created_at for e in read_entries(clients_file)] == [None, "2026-01-01T00:00:00+00:00"]


def test_a_write_keeps_other_entries_as_written(clients_file: Path) -> None:
    """Adding a client keeps existing entries' fields, mode 0600, and no temporary file."""
    add_client(clients_file, "billing", parse_scopes("resolve"))
    doc = json.loads(clients_file.read_text())
    assert doc["clients"][:2] == OLD_FILE["clients"]
    assert stat.S_IMODE(clients_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in clients_file.parent.iterdir()) == [
        "clients.json",
        "clients.json.lock",
    ]


def test_rotation_keeps_both_keys_until_the_old_one_ends(clients_file: Path) -> None:
    """After rotate, old and new keys work until valid_until; from then on only the new one."""
    clock = Clock()
    # The file keeps whole seconds (the CLI prints them so).
    until = datetime.fromtimestamp(clock.now, UTC).replace(microsecond=0) + timedelta(hours=1)
    new_key = rotate_client(clients_file, "legacy", old_valid_until=until)
    assert new_key.startswith("tpk_")
    assert new_key != OLD_KEY
    registry = ClientRegistry.load(clients_file, clock=clock)
    assert registry.authenticate(OLD_KEY) is not None
    assert registry.authenticate(new_key) is not None
    clock.now = until.timestamp() - 0.001
    assert registry.authenticate(OLD_KEY) is not None
    clock.now = until.timestamp()
    assert registry.authenticate(OLD_KEY) is None
    new = registry.authenticate(new_key)
    assert new is not None
    assert new.name == "legacy"
    assert new.scopes == frozenset({"resolve"})


def test_rotation_to_a_past_time_ends_the_old_key_at_once(clients_file: Path) -> None:
    """A rotation whose old-key end is not in the future leaves no previous key."""
    key = rotate_client(
        clients_file, "shop", old_valid_until=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert key.startswith("pk_")
    registry = ClientRegistry.load(clients_file)
    assert registry.authenticate(OLD_PK) is None
    assert registry.authenticate(key) is not None
    assert "previous_keys" not in json.loads(clients_file.read_text())["clients"][1]


def test_expired_previous_keys_leave_the_file_at_the_next_write(clients_file: Path) -> None:
    """A later rotate drops previous keys past their time and keeps those still valid."""
    soon = datetime.now(UTC) + timedelta(seconds=30)
    second = rotate_client(clients_file, "legacy", old_valid_until=soon)
    later = datetime.now(UTC) + timedelta(days=2)
    third = rotate_client(clients_file, "legacy", old_valid_until=later)
    entry = read_entries(clients_file)[0]
    assert {p.key_digest for p in entry.previous} == {digest(OLD_KEY), digest(second)}
    # Hand-age the first previous key, as if its time had passed before the next write.
    doc = json.loads(clients_file.read_text())
    doc["clients"][0]["previous_keys"][0]["valid_until"] = "2000-01-01T00:00:00+00:00"
    clients_file.write_text(json.dumps(doc))
    registry = ClientRegistry.load(clients_file)
    assert registry.authenticate(OLD_KEY) is None
    add_client(clients_file, "another", parse_scopes("read"))
    entry = read_entries(clients_file)[0]
    assert [p.key_digest for p in entry.previous] == [digest(second)]
    registry = ClientRegistry.load(clients_file)
    assert registry.authenticate(second) is not None
    assert registry.authenticate(third) is not None


def test_remove_drops_the_client_and_every_key(clients_file: Path) -> None:
    """remove takes the client's current and previous keys out; unknown names are refused."""
    new = rotate_client(
        clients_file, "legacy", old_valid_until=datetime.now(UTC) + timedelta(hours=1)
    )
    remove_client(clients_file, "legacy")
    registry = ClientRegistry.load(clients_file)
    assert registry.authenticate(OLD_KEY) is None
    assert registry.authenticate(new) is None
    assert [e.client.name for e in read_entries(clients_file)] == ["shop"]
    assert digest(OLD_KEY) not in clients_file.read_text()
    with pytest.raises(ValueError, match="no client named"):
        remove_client(clients_file, "legacy")
    with pytest.raises(ValueError, match="no client named"):
        rotate_client(clients_file, "ghost", old_valid_until=datetime.now(UTC))


def test_reload_swaps_in_a_changed_file_and_keeps_the_last_good_one(clients_file: Path) -> None:
    """A changed file is read; a broken one is reported once and the last good keys stay."""
    registry = ClientRegistry.load(clients_file)
    assert registry.reload() is None
    key = add_client(clients_file, "billing", parse_scopes("resolve"))
    assert registry.authenticate(key) is None
    result = registry.reload()
    assert result is not None
    assert result.ok
    assert registry.authenticate(key) is not None
    clients_file.write_text('{"format": "tokenproxy-clients/1", "clients": [{"name": ')
    broken = registry.reload()
    assert broken is not None
    assert not broken.ok
    assert broken.problem is not None
    assert str(clients_file) in broken.problem
    assert registry.reload() is None  # the same bad file is not parsed (or reported) again
    assert registry.authenticate(key) is not None
    assert registry.authenticate(OLD_KEY) is not None
    remove_client_file = clients_file.with_name("other.json")
    remove_client_file.write_text(json.dumps(OLD_FILE))
    os.replace(remove_client_file, clients_file)
    fixed = registry.reload()
    assert fixed is not None
    assert fixed.ok
    assert registry.authenticate(key) is None
    assert registry.authenticate(OLD_KEY) is not None


@pytest.mark.parametrize(
    "previous",
    [
        [{"key_sha256": "zz", "valid_until": "2030-01-01T00:00:00+00:00"}],
        [{"key_sha256": "a" * 64}],
        [{"key_sha256": "a" * 64, "valid_until": "tomorrow"}],
        [{"key_sha256": "a" * 64, "valid_until": 1893456000}],
        "a" * 64,
        [None],
    ],
)
def test_malformed_previous_keys_are_a_bad_file(clients_file: Path, previous: object) -> None:
    """A previous_keys field that does not validate makes the whole file invalid."""
    doc = json.loads(clients_file.read_text())
    doc["clients"][0]["previous_keys"] = previous
    clients_file.write_text(json.dumps(doc))
    with pytest.raises(ClientsFileError, match="not a valid clients file"):
        ClientRegistry.load(clients_file)


def test_concurrent_writers_lose_no_client(tmp_path: Path) -> None:
    """Commands adding clients at the same time all land in the file."""
    path = tmp_path / "clients.json"
    names = [f"svc-{i}" for i in range(8)]
    threads = [
        threading.Thread(target=add_client, args=(path, name, parse_scopes("read")))
        for name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(e.client.name for e in read_entries(path)) == names


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    offset=st.floats(min_value=2, max_value=10 * 86400),
    at=st.floats(min_value=-86400, max_value=20 * 86400),
    stranger=st.text(min_size=1, max_size=60),
)
def test_previous_key_is_accepted_exactly_before_its_end(
    tmp_path: Path, offset: float, at: float, stranger: str
) -> None:
    """For any end and any moment, the old key works iff before its end; the new one always."""
    path = tmp_path / f"clients-{abs(hash((offset, at, stranger)))}.json"
    path.write_text(json.dumps(OLD_FILE))
    clock = Clock()
    start = clock.now
    until = datetime.fromtimestamp(start + offset, UTC).replace(microsecond=0)
    new_key = rotate_client(path, "legacy", old_valid_until=until)
    registry = ClientRegistry.load(path, clock=clock)
    clock.now = start + at
    assert (registry.authenticate(OLD_KEY) is not None) == (clock.now < until.timestamp())
    assert registry.authenticate(new_key) is not None
    if stranger not in {OLD_KEY, OLD_PK, new_key}:
        assert registry.authenticate(stranger) is None


def test_grace_and_time_parsing() -> None:
    """Durations take s/m/h/d; times need a zone; anything else is refused."""
    assert parse_grace("90s") == timedelta(seconds=90)
    assert parse_grace("30m") == timedelta(minutes=30)
    assert parse_grace("24h") == timedelta(hours=24)
    assert parse_grace("7d") == timedelta(days=7)
    assert parse_grace("0") == timedelta(0)
    for bad in ("", "-1h", "1.5h", "1w", "h", "1e3"):
        with pytest.raises(ValueError, match="grace"):
            parse_grace(bad)
    assert parse_time("2030-01-31T12:00:00Z") == datetime(2030, 1, 31, 12, tzinfo=UTC)
    for bad in ("2030-01-31T12:00:00", "soon", ""):
        with pytest.raises(ValueError, match="zone"):
            parse_time(bad)


# ---------------------------------------------------------------------- the CLI


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CLI settings pointing into the test directory, with a key ring (commands audit)."""
    monkeypatch.setenv("TOKENPROXY_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("TOKENPROXY_CLIENTS", str(tmp_path / "clients.json"))
    monkeypatch.setenv("TOKENPROXY_VAULT_URL", f"sqlite:///{tmp_path / 'vault.db'}")
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    assert main(["keys", "init"]) == 0
    return tmp_path / "clients.json"


def test_cli_list_rotate_remove(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """list shows names, scopes and created, never a key or digest; rotate and remove work."""
    assert main(["clients", "add", "billing", "--scopes", "resolve,read"]) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["clients", "rotate", "billing", "--grace", "2h"]) == 0
    out = capsys.readouterr().out
    second = out.strip().splitlines()[-1]
    assert "old key works until" in out
    registry = ClientRegistry.load(cli)
    assert registry.authenticate(first) is not None
    assert registry.authenticate(second) is not None
    assert main(["clients", "list"]) == 0
    listing = capsys.readouterr().out
    assert "billing" in listing
    assert "read,resolve" in listing
    entry = read_entries(cli)[0]
    assert entry.created_at is not None
    assert entry.created_at in listing
    assert entry.previous[0].valid_until.isoformat(timespec="seconds") in listing
    for secret in (first, second, digest(first), digest(second)):
        assert secret not in listing
    assert main(["clients", "rotate", "billing", "--old-valid-until", "2000-01-01T00:00:00Z"]) == 0
    assert "no longer works" in capsys.readouterr().out
    assert main(["clients", "remove", "billing"]) == 0
    capsys.readouterr()
    assert read_entries(cli) == []
    assert main(["clients", "remove", "billing"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no client named 'billing'" in err


def test_cli_rotate_refuses_both_ends_and_bad_values(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rotate takes --grace or --old-valid-until, not both; bad values fail in one line."""
    assert main(["clients", "add", "billing", "--scopes", "resolve"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["clients", "rotate", "billing", "--grace", "1h", "--old-valid-until", "x"])
    capsys.readouterr()
    for args in (["--grace", "soon"], ["--old-valid-until", "2030-01-01T00:00:00"]):
        assert main(["clients", "rotate", "billing", *args]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert len(read_entries(cli)[0].previous) == 0


def test_scopes_help_lists_every_scope() -> None:
    """`clients add --help` names each valid scope next to --scopes."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    clients = sub.choices["clients"]  # type: ignore[index]
    add = next(a for a in clients._actions if a.dest == "clients_command").choices["add"]  # type: ignore[index]
    help_text = add.format_help()
    for scope in SCOPES:
        assert scope in help_text
