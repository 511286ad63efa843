"""Client keys: created once, shown once, stored only as SHA-256 digests.

Keys are 256-bit random strings, so a plain SHA-256 digest is as strong as a slow
password hash here (there is nothing to brute-force) and costs microseconds per request.

Two kinds of client:

- **secret** (``tpk_…``, the default): held by a service, any scopes.
- **publishable** (``pk_…``): meant to sit in a checkout page's HTML, so it is public by
  design. It holds only the ``tokenize`` scope and is bound to the web origins it may be
  used from (``proxy.publishable`` enforces the origin and a per-key rate limit).

The file format stays ``tokenproxy-clients/1``: ``kind`` and ``origins`` are optional
entry fields, absent on files written before publishable keys existed (read as secret).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.origins import OriginError, parse_origin
from vault.detect import holds_pan

# invoice: store invoice references (POST /v1/invoices) without being able to send card data.
SCOPES = frozenset({"tokenize", "read", "resolve", "delete", "admin", "invoice"})
KEY_PREFIX = "tpk_"
PUBLISHABLE_KEY_PREFIX = "pk_"
PUBLISHABLE_SCOPES = frozenset({"tokenize"})
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_FORMAT = "tokenproxy-clients/1"


class ClientsFileError(Exception):
    """The clients file is missing, unreadable or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class Client:
    """An authenticated caller: a name, the scopes it holds and, if publishable, its origins."""

    name: str
    scopes: frozenset[str]
    key_digest: str
    publishable: bool = False
    origins: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        kind = ", publishable" if self.publishable else ""
        return f"Client({self.name!r}, scopes={sorted(self.scopes)}{kind})"


def digest(key: str) -> str:
    """SHA-256 hex digest of a client key."""
    return hashlib.sha256(key.encode()).hexdigest()


class ClientRegistry:
    """Looks clients up by key digest; comparison is constant time."""

    def __init__(self, clients: list[Client]) -> None:
        self._by_digest = {c.key_digest: c for c in clients}

    @classmethod
    def load(cls, path: Path) -> ClientRegistry:
        """Read the clients file, failing with one line that names it and the problem."""
        return cls(_read(path))

    def authenticate(self, key: str) -> Client | None:
        """The client holding ``key``, or None."""
        wanted = digest(key)
        client = self._by_digest.get(wanted)
        # The dict lookup is on the digest, not the key; the final comparison is
        # constant-time so a near miss reveals nothing either.
        if client is None or not hmac.compare_digest(client.key_digest, wanted):
            return None
        return client

    def __len__(self) -> int:
        return len(self._by_digest)


def _read(path: Path) -> list[Client]:
    return [_entry(path, e) for e in _load(path)["clients"]]


def _load(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClientsFileError(
            f"clients file {path} does not exist (create one: tokenproxy clients add NAME)"
        ) from None
    except OSError as exc:
        raise ClientsFileError(f"clients file {path} cannot be read ({exc.strerror})") from None
    try:
        doc = json.loads(raw)
        if doc.get("format") != _FORMAT:
            raise ClientsFileError(f"clients file {path} has no {_FORMAT!r} format tag")
        valid = isinstance(doc["clients"], list)
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise ClientsFileError(f"clients file {path} is not a valid clients file")
    return dict(doc)


def _entry(path: Path, entry: Any) -> Client:
    malformed = ClientsFileError(f"clients file {path} has a malformed entry")
    try:
        scopes = frozenset(entry["scopes"])
        kind = entry.get("kind", "secret")
        origins = frozenset(entry.get("origins", ()))
        client = Client(entry["name"], scopes, entry["key_sha256"], kind == "publishable", origins)
        if not scopes <= SCOPES or not re.fullmatch(r"[0-9a-f]{64}", client.key_digest):
            raise malformed
        if kind == "publishable":
            # A publishable key is public: anything beyond tokenize would be a leak of power.
            if scopes != PUBLISHABLE_SCOPES or not origins:
                raise malformed
            if any(parse_origin(o) != o for o in origins):
                raise malformed
        elif kind != "secret" or origins:
            raise malformed
    except (ValueError, KeyError, TypeError, AttributeError):
        # OriginError is a ValueError: a hand-edited origin lands here too.
        raise ClientsFileError(f"clients file {path} is not a valid clients file") from None
    return client


def parse_scopes(text: str) -> frozenset[str]:
    """Parse ``tokenize,read`` into scopes, refusing unknown ones."""
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = scopes - SCOPES
    if not scopes or unknown:
        raise ValueError(f"scopes must be a comma-separated subset of {', '.join(sorted(SCOPES))}")
    return scopes


def parse_origins(text: str) -> frozenset[str]:
    """Parse ``https://a.example,https://b.example`` into normalised origins."""
    origins = frozenset(parse_origin(o) for o in text.split(",") if o.strip())
    if not origins:
        raise OriginError("a publishable client needs at least one origin")
    return origins


def add_client(
    path: Path,
    name: str,
    scopes: frozenset[str],
    *,
    publishable: bool = False,
    origins: frozenset[str] = frozenset(),
) -> str:
    """Add a client to the file (creating it) and return its key; the key is not stored."""
    # The name is written to the clients file, every log line and every audit event.
    if not _NAME_RE.match(name) or holds_pan(name):
        raise ValueError(
            "client name must be 1-63 of a-z 0-9 _ . - starting with a letter/digit"
            " and must not be a card number"
        )
    if publishable and (scopes != PUBLISHABLE_SCOPES or not origins):
        raise ValueError("a publishable client has only the tokenize scope and at least one origin")
    if not publishable and origins:
        raise ValueError("only publishable clients are bound to origins")
    entries: list[Any] = []
    if path.exists():
        doc = _load(path)
        for entry in doc["clients"]:
            _entry(path, entry)
        # Keep existing entries as written (created_at and any field a later version adds).
        entries = list(doc["clients"])
        if any(e["name"] == name for e in entries):
            raise ValueError(f"a client named {name!r} already exists")
    prefix = PUBLISHABLE_KEY_PREFIX if publishable else KEY_PREFIX
    key = prefix + secrets.token_urlsafe(32)
    new: dict[str, object] = {"name": name, "scopes": sorted(scopes), "key_sha256": digest(key)}
    if publishable:
        new["kind"] = "publishable"
        new["origins"] = sorted(parse_origin(o) for o in origins)
    new["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    entries.append(new)
    _write_atomic(path, json.dumps({"format": _FORMAT, "clients": entries}, indent=2) + "\n")
    return key


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
