"""Client keys: created once, shown once, stored only as SHA-256 digests.

Keys are 256-bit random strings, so a plain SHA-256 digest is as strong as a slow
password hash here (there is nothing to brute-force) and costs microseconds per request.

Two kinds of client:

- **secret** (``tpk_…``, the default): held by a service, any scopes.
- **publishable** (``pk_…``): meant to sit in a checkout page's HTML, so it is public by
  design. It holds only the ``tokenize`` scope and is bound to the web origins it may be
  used from (``proxy.web.publishable`` enforces the origin and a per-key rate limit).

The file format stays ``tokenproxy-clients/1``: ``kind`` and ``origins`` are optional
entry fields, absent on files written before publishable keys existed (read as secret),
and so is ``previous_keys``: keys replaced by ``clients rotate``, each with the
``valid_until`` time after which it is refused. A reader that predates it ignores the
field and so accepts only the current key: it fails closed.

A secret client may be bound to a client-certificate identity (``cert_subject``: subject
attributes such as ``CN=billing``, or one subjectAltName such as ``DNS:billing.svc``):
its key is then accepted only on a connection that presented a verified certificate with
that identity (the internal listener with ``TOKENPROXY_TLS_CLIENT_CA_FILE``). A reader
that predates the field would accept the key alone; run every replica on a version that
knows it before binding a client.

A serving process follows the file (:class:`ClientRegistry` ``reload``): a change swaps
in the new set of keys whole, and a file that does not validate leaves the last good set
in force. Every write replaces the file atomically (temporary file, then rename; mode
0600) under an exclusive lock, so a reader never sees half a file and two concurrent
commands never lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pandetect import holds_pan
from proxy.domain.origins import OriginError, parse_origin
from proxy.infra.tls import parse_identity
from vault.keys.ring import FileWatch

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
    # The client certificate its key must arrive with (see the module docstring).
    cert_identity: str | None = None

    def __repr__(self) -> str:
        kind = ", publishable" if self.publishable else ""
        return f"Client({self.name!r}, scopes={sorted(self.scopes)}{kind})"


# Issued keys are a prefix and 43 URL-safe characters; anything much longer is not a key.
_MAX_KEY_LENGTH = 256


def digest(key: str) -> str:
    """SHA-256 hex digest of a client key (any string, even one with undecodable bytes)."""
    # aiohttp decodes header bytes that are not UTF-8 into lone surrogates; strict
    # encoding would raise on them, so hash the bytes the client actually sent.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class PreviousKey:
    """A key replaced by a rotation: accepted until ``valid_until``, refused from then on."""

    key_digest: str
    valid_until: datetime

    def __repr__(self) -> str:
        return f"PreviousKey(valid_until={self.valid_until.isoformat()})"


@dataclass(frozen=True, slots=True)
class ClientEntry:
    """One client as the file holds it: the client, when it was added, its previous keys."""

    client: Client
    created_at: str | None = None
    previous: tuple[PreviousKey, ...] = ()


# digest -> (that digest, client, time from which the key is refused; None: current key)
_KeyIndex = dict[str, tuple[str, Client, float | None]]


def _index(entries: Iterable[ClientEntry | Client]) -> _KeyIndex:
    keys: _KeyIndex = {}
    for item in entries:
        entry = item if isinstance(item, ClientEntry) else ClientEntry(item)
        current = entry.client.key_digest
        keys[current] = (current, entry.client, None)
        for old in entry.previous:
            keys.setdefault(
                old.key_digest, (old.key_digest, entry.client, old.valid_until.timestamp())
            )
    return keys


@dataclass(frozen=True, slots=True)
class Reload:
    """What a reload found: ``ok``, or the file's problem (the last good clients stay)."""

    ok: bool
    problem: str | None = None


class ClientRegistry:
    """Looks clients up by key digest; comparison is constant time.

    Built by :meth:`load`, it follows its file: :meth:`reload` re-reads it when its
    identity (inode, size, mtime) changed and swaps the whole key index in one
    assignment, so a request sees either the old set or the new one, never a mix. A
    file that fails validation is rejected (the last good set stays) and not parsed
    again until it changes once more.
    """

    def __init__(
        self, clients: Iterable[ClientEntry | Client], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path: Path | None = None
        self._watch: FileWatch | None = None
        self._clock = clock
        self._keys = _index(clients)

    @classmethod
    def load(cls, path: Path, *, clock: Callable[[], float] = time.time) -> ClientRegistry:
        """Read the clients file, failing with one line that names it and the problem.

        ``clock`` (Unix seconds) decides when a previous key's time has come.
        """
        # Stat before reading: a write racing the read then shows as a change at the next look.
        watch = FileWatch(path)
        registry = cls(read_entries(path), clock=clock)
        registry.path, registry._watch = path, watch
        return registry

    def authenticate(self, key: str) -> Client | None:
        """The client holding ``key``, or None (unknown, malformed, or an expired previous key)."""
        if not (0 < len(key) <= _MAX_KEY_LENGTH and key.isascii() and key.isprintable()):
            return None
        keys = self._keys  # one snapshot for the whole check: reload swaps the attribute
        wanted = digest(key)
        found = keys.get(wanted)
        # The dict lookup is on the digest, not the key; the final comparison is
        # constant-time so a near miss reveals nothing either.
        if found is None or not hmac.compare_digest(found[0], wanted):
            return None
        _, client, refused_from = found
        if refused_from is not None and self._clock() >= refused_from:
            return None
        return client

    def reload(self, *, force: bool = True) -> Reload | None:
        """Re-read the file if it changed since the last good or bad read; None if not.

        Unless ``force``, the file is looked at no more often than the key ring's
        ``RELOAD_CHECK_SECONDS``.
        """
        if self._watch is None or self.path is None:
            return None
        stamp = self._watch.changed(force=force)
        if stamp is None:
            return None
        try:
            entries = read_entries(self.path)
        except ClientsFileError as exc:
            self._watch.reject(stamp)
            return Reload(ok=False, problem=str(exc))
        self._keys = _index(entries)
        self._watch.accept(stamp)
        return Reload(ok=True)

    def __len__(self) -> int:
        return len({client.name for _, client, _ in self._keys.values()})


def read_entries(path: Path) -> list[ClientEntry]:
    """Every client in the file with its creation time and previous keys (never a key)."""
    return [_full_entry(path, e) for e in _load(path)["clients"]]


def _full_entry(path: Path, entry: Any) -> ClientEntry:
    client = _entry(path, entry)
    created = entry.get("created_at")
    previous = []
    malformed = ClientsFileError(f"clients file {path} is not a valid clients file")
    try:
        for old in entry.get("previous_keys", ()):
            if not re.fullmatch(r"[0-9a-f]{64}", old["key_sha256"]):
                raise malformed
            previous.append(PreviousKey(old["key_sha256"], _aware(old["valid_until"])))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise malformed from None
    return ClientEntry(client, created if isinstance(created, str) else None, tuple(previous))


def _aware(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        # A hand-edited time without an offset: read as UTC, as the CLI writes it.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


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
        identity = entry.get("cert_subject")
        if identity is not None and (kind != "secret" or parse_identity(identity) != identity):
            # A publishable key is used from browsers, which hold no client certificate.
            raise malformed
        client = Client(
            entry["name"], scopes, entry["key_sha256"], kind == "publishable", origins, identity
        )
        if not scopes <= SCOPES or not re.fullmatch(r"[0-9a-f]{64}", client.key_digest):
            raise malformed
        if not isinstance(client.name, str) or holds_pan(client.name):
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
    cert_identity: str | None = None,
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
    if cert_identity is not None:
        if publishable:
            raise ValueError("a publishable client cannot be bound to a client certificate")
        cert_identity = parse_identity(cert_identity)
    with _editing(path, create=True) as entries:
        if any(e["name"] == name for e in entries):
            raise ValueError(f"a client named {name!r} already exists")
        key = _new_key(publishable=publishable)
        new: dict[str, object] = {"name": name, "scopes": sorted(scopes), "key_sha256": digest(key)}
        if publishable:
            new["kind"] = "publishable"
            new["origins"] = sorted(parse_origin(o) for o in origins)
        if cert_identity is not None:
            new["cert_subject"] = cert_identity
        new["created_at"] = _now().isoformat(timespec="seconds")
        entries.append(new)
    return key


def remove_client(path: Path, name: str) -> None:
    """Remove a client and every key it holds (current and previous) from the file."""
    with _editing(path) as entries:
        index = _position(entries, name)
        del entries[index]


def rotate_client(path: Path, name: str, *, old_valid_until: datetime) -> str:
    """Give a client a new key and return it; its current key is accepted until ``old_valid_until``.

    A time not after now retires the current key at once. Previous keys from earlier
    rotations stay until their own time, then leave the file at its next write.
    """
    if old_valid_until.tzinfo is None:
        raise ValueError("the old key's end needs a time zone (e.g. 2030-01-31T12:00:00Z)")
    with _editing(path) as entries:
        entry = entries[_position(entries, name)]
        key = _new_key(publishable=entry.get("kind") == "publishable")
        previous = list(entry.get("previous_keys", ()))
        if old_valid_until > _now():
            previous.append(
                {
                    "key_sha256": entry["key_sha256"],
                    "valid_until": old_valid_until.astimezone(UTC).isoformat(timespec="seconds"),
                }
            )
        entry["key_sha256"] = digest(key)
        entry["previous_keys"] = previous
        entry["rotated_at"] = _now().isoformat(timespec="seconds")
    return key


def parse_grace(text: str) -> timedelta:
    """A duration such as ``90s``, ``30m``, ``24h``, ``7d`` (or plain seconds); ``0`` is none."""
    match = re.fullmatch(r"\s*([0-9]{1,7})\s*([smhd]?)\s*", text)
    if match is None:
        raise ValueError("a grace period is a whole number with s, m, h or d (e.g. 24h)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return timedelta(seconds=int(match.group(1)) * unit)


def parse_time(text: str) -> datetime:
    """An ISO-8601 time with a zone offset (``Z`` allowed); ValueError without one."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("a time is ISO-8601 with a zone, e.g. 2030-01-31T12:00:00Z") from None
    if parsed.tzinfo is None:
        raise ValueError("a time needs a zone offset, e.g. 2030-01-31T12:00:00Z")
    return parsed


def _now() -> datetime:
    return datetime.now(UTC)


def _new_key(*, publishable: bool) -> str:
    return (PUBLISHABLE_KEY_PREFIX if publishable else KEY_PREFIX) + secrets.token_urlsafe(32)


def _position(entries: list[dict[str, Any]], name: str) -> int:
    for index, entry in enumerate(entries):
        if entry["name"] == name:
            return index
    raise ValueError(f"no client named {name!r}")


@contextlib.contextmanager
def _editing(path: Path, *, create: bool = False) -> Iterator[list[dict[str, Any]]]:
    """The file's entries to change in place; written back atomically when the block ends.

    An exclusive lock on a side file serialises concurrent commands. Previous keys past
    their time are dropped on the way out.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f"{path.name}.lock")
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        entries: list[dict[str, Any]] = []
        if path.exists() or not create:
            doc = _load(path)
            for entry in doc["clients"]:
                _full_entry(path, entry)
            # Keep existing entries as written (created_at and any field a later version adds).
            entries = [dict(e) for e in doc["clients"]]
        yield entries
        now = _now()
        for entry in entries:
            if "previous_keys" in entry:
                kept = [k for k in entry["previous_keys"] if _aware(k["valid_until"]) > now]
                if kept:
                    entry["previous_keys"] = kept
                else:
                    del entry["previous_keys"]
        _write_atomic(path, json.dumps({"format": _FORMAT, "clients": entries}, indent=2) + "\n")
    finally:
        os.close(fd)  # closing the descriptor releases the lock


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
