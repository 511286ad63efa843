"""Vault URLs: which backend a URL names and where its data lives.

SQLite URLs follow SQLAlchemy's convention, so a URL means what people expect:

- ``sqlite:///var/vault.db``: a path relative to the working directory (three slashes
  end the empty host; what follows is the path as written).
- ``sqlite:////srv/tokenproxy/vault.db``: an absolute path (the fourth slash is the root).

Refused, with a message naming the form: ``sqlite://`` and ``sqlite:///`` and
``sqlite:///:memory:`` (an in-memory vault loses every token at exit, and each of the
backend's connections would see a different empty database), a host (``sqlite://h/x``),
a directory (a trailing slash), and a query string (``?mode=ro`` and friends: no SQLite
option is supported, and taking ``?`` literally would name a file nobody meant). The
path is otherwise taken literally: no percent-decoding and no ``~`` expansion.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from vault.errors import VaultUrlError

SQLITE_PREFIX = "sqlite://"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
_MEMORY = ":memory:"


def sqlite_path(url: str) -> Path:
    """The absolute file a ``sqlite:///`` URL names, resolved against the working directory."""
    if not url.startswith(SQLITE_PREFIX):
        raise VaultUrlError("a SQLite vault URL starts with sqlite:///")
    rest = url.removeprefix(SQLITE_PREFIX)
    if not rest.startswith("/"):
        if rest:
            raise VaultUrlError(
                "a SQLite vault URL has no host: sqlite:///relative/path or sqlite:////absolute/path"
            )
        raise VaultUrlError(_no_memory())
    path = rest[1:]
    if "?" in path:
        raise VaultUrlError("a SQLite vault URL takes no query string (no option is supported)")
    if not path or path == _MEMORY:
        raise VaultUrlError(_no_memory())
    if path.endswith("/"):
        raise VaultUrlError("a SQLite vault URL names a file, not a directory")
    # abspath, not resolve(): a symlinked data directory is logged as the operator wrote it.
    return Path(os.path.abspath(path))


def _no_memory() -> str:
    return (
        "an in-memory SQLite vault would lose every token at exit: name a file, "
        "sqlite:///relative/path or sqlite:////absolute/path"
    )


def check_vault_url(url: str) -> None:
    """Raise VaultUrlError unless ``url`` is a SQLite or PostgreSQL URL this code opens."""
    if url.startswith(SQLITE_PREFIX):
        sqlite_path(url)
    elif not url.startswith(POSTGRES_PREFIXES):
        raise VaultUrlError(
            "the vault URL must be sqlite:///relative/path, sqlite:////absolute/path "
            "or postgresql://..."
        )


def describe_vault_url(url: str) -> str:
    """Where the vault lives, safe to log: the absolute file, or the server without credentials."""
    if url.startswith(SQLITE_PREFIX):
        return str(sqlite_path(url))
    if url.startswith(POSTGRES_PREFIXES):
        try:
            parts = urlsplit(url)
            host = parts.hostname or "localhost"
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return "postgresql://(unparsable)"
        # User and password stay out: the password is a secret, the user names an account.
        return f"postgresql://{host}{port}{parts.path}"
    return "(unknown vault URL)"
