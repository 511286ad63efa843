"""TOKENPROXY_DATABASE_PASSWORD_FILE: the PostgreSQL password from a file, not the URL."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.infra.settings import Settings, SettingsError

URL = "postgresql://tokenproxy@db.example:5432/tokenproxy"
# A sandbox partner base, so no Stripe key is needed to build settings.
SANDBOX = {"TOKENPROXY_STRIPE_API_BASE": "http://127.0.0.1:1"}


def _settings(tmp_path: Path, password: str, url: str = URL) -> Settings:
    secret = tmp_path / "database-password"
    secret.write_text(password, encoding="utf-8")
    return Settings.from_env(
        {
            **SANDBOX,
            "TOKENPROXY_VAULT_URL": url,
            "TOKENPROXY_DATABASE_PASSWORD_FILE": str(secret),
        }
    )


def test_the_password_file_completes_a_url_without_one(tmp_path: Path) -> None:
    """The file's password joins the URL's user; a trailing newline is not part of it."""
    settings = _settings(tmp_path, "s3cret\n")
    assert settings.vault_url == "postgresql://tokenproxy:s3cret@db.example:5432/tokenproxy"
    assert "s3cret" not in settings.vault_location


@given(password=st.text(min_size=1).filter(lambda p: p.rstrip("\r\n") == p and "\0" not in p))
def test_any_password_survives_the_url_intact(password: str) -> None:
    """Reserved characters (@ : / # % ?) are percent-encoded and decode to the same password."""
    with tempfile.TemporaryDirectory() as scratch:
        url = _settings(Path(scratch), password).vault_url
    parts = urlsplit(url)
    assert parts.password is not None
    assert unquote(parts.password) == password
    assert parts.hostname == "db.example"
    assert parts.port == 5432
    assert parts.path == "/tokenproxy"
    assert unquote(parts.username or "") == "tokenproxy"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://tokenproxy:inline@db.example/tokenproxy", "already holds a password"),
        ("postgresql://db.example/tokenproxy", "must name the user"),
        ("sqlite:///var/vault.db", "needs a postgresql://"),
    ],
)
def test_a_url_that_cannot_take_the_password_is_refused(
    tmp_path: Path, url: str, problem: str
) -> None:
    """One line naming the setting; neither password is echoed."""
    with pytest.raises(SettingsError, match=problem) as caught:
        _settings(tmp_path, "filepass", url)
    assert "TOKENPROXY_DATABASE_PASSWORD_FILE" in str(caught.value)
    assert "filepass" not in str(caught.value)
    assert "inline" not in str(caught.value)


def test_a_missing_or_empty_password_file_is_refused(tmp_path: Path) -> None:
    """Start-up stops with the setting named, rather than connecting without a password."""
    with pytest.raises(SettingsError, match="TOKENPROXY_DATABASE_PASSWORD_FILE cannot be read"):
        Settings.from_env(
            {
                **SANDBOX,
                "TOKENPROXY_VAULT_URL": URL,
                "TOKENPROXY_DATABASE_PASSWORD_FILE": str(tmp_path / "absent"),
            }
        )
    with pytest.raises(SettingsError, match="TOKENPROXY_DATABASE_PASSWORD_FILE is empty"):
        _settings(tmp_path, "\n")
