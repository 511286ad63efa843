"""Vault URLs: SQLite paths follow SQLAlchemy's convention; logged locations hold no secret."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.infra.settings import Settings, SettingsError
from vault import LocalKekProvider, Vault, VaultError
from vault.keys.ring import init_keyring
from vault.urls import describe_vault_url, sqlite_path

BASE = {"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:12111"}
REFUSED = [
    "sqlite://",
    "sqlite:///",
    "sqlite:///:memory:",
    "sqlite://:memory:",
    "sqlite://host/vault.db",
    "sqlite:////",
    "sqlite:///var/",
    "sqlite:///vault.db?mode=ro",
    "sqlite:////srv/vault.db?cache=shared",
]


def test_three_slashes_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite:///var/vault.db names var/vault.db under the working directory, not /var."""
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:///var/vault.db") == tmp_path / "var" / "vault.db"
    assert sqlite_path("sqlite:///./v.db") == tmp_path / "v.db"
    assert sqlite_path("sqlite:///../v.db") == tmp_path.parent / "v.db"


def test_four_slashes_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite:////srv/x.db names /srv/x.db whatever the working directory."""
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:////srv/tokenproxy/vault.db") == Path("/srv/tokenproxy/vault.db")
    assert sqlite_path(f"sqlite:///{tmp_path / 'v.db'}") == tmp_path / "v.db"


async def test_relative_url_opens_the_file_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening sqlite:///DIR/vault.db creates DIR under the working directory, not at the root."""
    ring = tmp_path / "keyring.json"
    init_keyring(ring)
    work = tmp_path / "clone"
    work.mkdir()
    monkeypatch.chdir(work)
    folder = f"vault-url-{secrets.token_hex(6)}"
    try:
        vault = await Vault.open(f"sqlite:///{folder}/vault.db", LocalKekProvider.from_file(ring))
        await vault.close()
        assert (work / folder / "vault.db").is_file()
    finally:
        # Before SQLite URLs kept their relative path this landed at the file-system root.
        shutil.rmtree(Path("/") / folder, ignore_errors=True)
    assert not (Path("/") / folder).exists()


@pytest.mark.parametrize("url", REFUSED)
async def test_memory_host_and_query_forms_are_refused(url: str, tmp_path: Path) -> None:
    """In-memory, host-bearing and query-string SQLite URLs are refused, not guessed at."""
    ring = tmp_path / "keyring.json"
    init_keyring(ring)
    with pytest.raises(VaultError):
        await Vault.open(url, LocalKekProvider.from_file(ring))


@pytest.mark.parametrize("url", REFUSED)
def test_settings_refuse_the_same_forms_in_one_line(url: str) -> None:
    """TOKENPROXY_VAULT_URL with a refused SQLite form stops start-up with one named line."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, "TOKENPROXY_VAULT_URL": url})
    assert str(info.value).startswith("TOKENPROXY_VAULT_URL")
    assert "\n" not in str(info.value)


def test_settings_log_the_absolute_vault_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-up line's vault field is the absolute file a relative URL resolves to."""
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({**BASE, "TOKENPROXY_VAULT_URL": "sqlite:///var/vault.db"})
    assert s.strip_hazmat()["vault"] == str(tmp_path / "var" / "vault.db")
    assert Settings.from_env(BASE).vault_location == str(tmp_path / "var" / "vault.db")


_segment = st.text(
    alphabet=st.characters(
        whitelist_categories=("L", "N"), whitelist_characters="-_.", max_codepoint=0x2FF
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in {".", ".."})


@given(parts=st.lists(_segment, min_size=1, max_size=4))
def test_any_relative_path_resolves_under_the_working_directory(parts: list[str]) -> None:
    """Every relative path after three slashes lands under the working directory, as written."""
    relative = "/".join(parts)
    assert sqlite_path(f"sqlite:///{relative}") == Path(os.getcwd(), *parts)
    assert sqlite_path(f"sqlite:////{relative}") == Path("/", *parts)


@given(
    password=st.text(
        alphabet=st.characters(whitelist_categories=("L", "N")), min_size=6, max_size=30
    ),
    user=st.text(alphabet="abcdefghij", min_size=1, max_size=8),
)
def test_described_postgres_url_holds_no_credentials(password: str, user: str) -> None:
    """The logged PostgreSQL location names host, port and database, never user or password."""
    described = describe_vault_url(f"postgresql://{user}:{password}@db.internal:5433/vault")
    assert described == "postgresql://db.internal:5433/vault"
    assert password not in described.removeprefix("postgresql://db.internal:5433/")


ROOT = Path(__file__).resolve().parents[2]


def test_container_manifests_name_absolute_sqlite_files() -> None:
    """The image and compose file name their SQLite vault with four slashes (absolute)."""
    for name in ("Dockerfile", "deploy/compose.yaml"):
        urls = re.findall(r"sqlite:/{3,}[^\s'\"`]+", (ROOT / name).read_text())
        assert urls, name
        for url in urls:
            assert sqlite_path(url) == Path("/var/lib/tokenproxy/vault.db"), (name, url)


def test_a_postgres_url_without_asyncpg_names_the_extra() -> None:
    """Without asyncpg installed, a postgresql:// URL fails with one line naming the extra."""
    script = (
        "import sys\n"
        "sys.modules['asyncpg'] = None\n"
        "from vault.errors import VaultUrlError\n"
        "from vault.store import open_backend\n"
        "try:\n"
        "    open_backend('postgresql://app:s3cret-pw@db.internal:5432/vault')\n"
        "except VaultUrlError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == (
        "a postgresql:// vault URL needs the postgres extra: pip install 'tokenproxy[postgres]'\n"
    )
    assert "s3cret" not in done.stdout + done.stderr
