"""Versioned key-encryption keys (KEKs) in a local file, behind a small provider interface.

The file is JSON::

    {"format": "tokenproxy-keyring/1", "active": 2, "index_key": "<base64 32 bytes>",
     "keys": [{"version": 1, "created_at": "2024-05-01T10:00:00Z",
               "state": "decrypt_only", "key": "<base64 32 bytes>"}, ...]}

One version is ``active`` (wraps new data keys), older ones are ``decrypt_only``, and
``retired`` versions keep no key material at all. Loading fails closed with a
:class:`KeyRingError` whose one-line message names the file and the problem and never
echoes anything read from the file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import fcntl
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, Protocol, Self, runtime_checkable

from vault.crypto import KEY_BYTES, Sealer, key_check_mac, new_key
from vault.errors import KeyInUse, KeyRingError, UnknownKeyVersion

__all__ = [
    "KEYRING_FORMAT",
    "KekProvider",
    "KeyInfo",
    "KeyRing",
    "KeyState",
    "LocalKekProvider",
    "init_keyring",
    "retire_key",
    "rotate_keyring",
]

KEYRING_FORMAT = "tokenproxy-keyring/1"

_TOP_FIELDS = frozenset({"format", "active", "index_key", "keys"})
_KEY_FIELDS = frozenset({"version", "created_at", "state", "key"})
# A real key ring is a few hundred bytes per version; anything huge is not one of ours.
_MAX_FILE_BYTES = 1 << 20
# Field names are echoed in errors only when they look like identifiers, so a stray key
# pasted as a JSON name (44 base64 characters) can never reach a log line.
_ECHOABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_log = logging.getLogger("vault.keys.ring")


class KeyState(enum.StrEnum):
    """Lifecycle of a KEK version."""

    ACTIVE = "active"
    DECRYPT_ONLY = "decrypt_only"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """Public facts about one KEK version; never holds key bytes."""

    version: int
    created_at: datetime
    state: KeyState


class _KeyMaterial:
    """Holds key bytes so that ``vars()`` of a KeyRing or a traceback's locals show none."""

    __slots__ = ("index_key", "keks")

    def __init__(self, keks: dict[int, bytes], index_key: bytes) -> None:
        self.keks = keks
        self.index_key = index_key

    def __repr__(self) -> str:
        return "<key material redacted>"

    def __reduce__(self) -> NoReturn:
        # Pickling would copy keys into caches, queues or crash dumps without anyone noticing.
        raise TypeError("key material cannot be pickled")


class KeyRing:
    """An immutable, validated view of a key ring file."""

    __slots__ = ("_active", "_infos", "_material", "_path")

    def __init__(
        self,
        path: Path,
        active: int,
        infos: tuple[KeyInfo, ...],
        material: _KeyMaterial,
    ) -> None:
        self._path = path
        self._active = active
        self._infos = infos
        self._material = material

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Read and validate the key ring at ``path``; any problem raises KeyRingError."""
        file = Path(path)
        return cls._from_document(file, _parse_json(file, _read_private_file(file)))

    @property
    def path(self) -> Path:
        """The file this view was read from."""
        return self._path

    @property
    def active_version(self) -> int:
        """The version that wraps new data keys."""
        return self._active

    @property
    def index_key(self) -> bytes:
        """The key for blind indexes (lookups by fingerprint, customer, idempotency key)."""
        return self._material.index_key

    def versions(self) -> list[KeyInfo]:
        """Every version, oldest first, without key material."""
        return list(self._infos)

    def kek(self, version: int) -> bytes:
        """Key bytes of ``version``; raises KeyRingError if it is unknown or retired."""
        try:
            return self._material.keks[version]
        except KeyError:
            if any(info.version == version for info in self._infos):
                raise _error(self._path, f"key version {version} is retired") from None
            raise UnknownKeyVersion(
                f"key ring {_shown(self._path)}: key version {version} does not exist"
            ) from None

    def __repr__(self) -> str:
        versions = ", ".join(f"{i.version}:{i.state.value}" for i in self._infos)
        return f"KeyRing(path={str(self._path)!r}, active={self._active}, versions=[{versions}])"

    @classmethod
    def _from_document(cls, path: Path, doc: object) -> KeyRing:
        """Validate a parsed document; the checks run in the order an operator would fix them."""
        if not isinstance(doc, dict):
            raise _error(path, "top level is not a JSON object")
        if doc.get("format") != KEYRING_FORMAT:
            raise _error(path, f"format tag is not {KEYRING_FORMAT!r}")
        _check_fields(path, "top level", doc, _TOP_FIELDS)
        active = doc["active"]
        if not _is_version(active):
            raise _error(path, "active is not a positive integer")
        index_key = _decode_key(path, "index_key", doc["index_key"])
        entries = doc["keys"]
        if not isinstance(entries, list) or not entries:
            raise _error(path, "keys is not a non-empty list")

        infos: list[KeyInfo] = []
        keks: dict[int, bytes] = {}
        for position, entry in enumerate(entries):
            info, kek = _parse_entry(path, position, entry)
            if any(seen.version == info.version for seen in infos):
                raise _error(path, f"version {info.version} appears more than once")
            infos.append(info)
            if kek is not None:
                keks[info.version] = kek

        active_versions = [i.version for i in infos if i.state is KeyState.ACTIVE]
        if not active_versions:
            raise _error(path, "no key has state 'active'")
        if len(active_versions) > 1:
            listed = ", ".join(str(v) for v in active_versions)
            raise _error(path, f"more than one key has state 'active' (versions {listed})")
        by_version = {i.version: i for i in infos}
        if active not in by_version:
            raise _error(path, f"active is {active} but there is no version {active}")
        if by_version[active].state is not KeyState.ACTIVE:
            state = by_version[active].state.value
            raise _error(path, f"active is {active} but version {active} is {state}")

        infos.sort(key=lambda i: i.version)
        return cls(path, active, tuple(infos), _KeyMaterial(keks, index_key))

    def _to_document(self) -> dict[str, Any]:
        """The JSON document for this ring, key material included."""
        keks = self._material.keks
        return {
            "format": KEYRING_FORMAT,
            "active": self._active,
            "index_key": _b64(self._material.index_key),
            "keys": [
                {
                    "version": info.version,
                    "created_at": _format_time(info.created_at),
                    "state": info.state.value,
                    "key": _b64(keks[info.version]) if info.version in keks else None,
                }
                for info in self._infos
            ],
        }


# --- loading -------------------------------------------------------------------------


def _shown(path: Path) -> str:
    return str(path).replace("\r", "\\r").replace("\n", "\\n")


def _error(path: Path, problem: str) -> KeyRingError:
    """A one-line KeyRingError naming the file and the problem."""
    return KeyRingError(f"key ring {_shown(path)}: {problem}")


def _read_private_file(path: Path) -> bytes:
    """Read a regular file that only its owner may access."""
    try:
        # O_NONBLOCK so a FIFO planted at the path is rejected below instead of hanging
        # start-up; fstat on the open descriptor leaves no window to swap the file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _error(path, "file does not exist") from None
    except PermissionError:
        raise _error(path, "file is not readable by this user") from None
    except OSError as exc:
        raise _error(path, f"cannot open file ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _error(path, "is not a regular file")
        if st.st_mode & 0o077 and not _secret_volume_file(st, os.getegid()):
            mode = stat.S_IMODE(st.st_mode)
            raise _error(path, f"mode {mode:04o} allows group or world access; chmod 600 it")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _error(path, f"cannot read file ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE_BYTES:
        raise _error(path, f"file is larger than {_MAX_FILE_BYTES} bytes")
    return data


def _secret_volume_file(st: os.stat_result, egid: int) -> bool:
    """Whether the file is laid out as kubelet writes a Secret volume for this process's group.

    kubelet writes Secret files owned by root, group ``fsGroup``, at least mode 0440, and
    offers no way to hand them to the pod's user; mounting the Secret directly is what lets
    a rotation reach running pods. So a root-owned, read-only file readable by exactly this
    process's own (non-root) group is accepted: the service's group holds only its user.
    """
    return (
        st.st_uid == 0
        and egid != 0
        and st.st_gid == egid
        and stat.S_IMODE(st.st_mode) in (0o440, 0o040)
    )


def _parse_json(path: Path, data: bytes) -> object:
    """Decode JSON strictly: no duplicate names, no NaN, and truncation reported as such."""
    if not data.strip():
        raise _error(path, "file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _error(path, "file is not valid UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject)
    except json.JSONDecodeError as exc:
        # The exception holds the whole document (keys included) in `.doc`: never chain it.
        truncated = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        if truncated:
            raise _error(path, "file is truncated (JSON ends early)") from None
        raise _error(path, f"not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except ValueError as exc:
        raise _error(path, str(exc)) from None


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse duplicate names, which json.loads would otherwise resolve silently."""
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate field {_describe_name(name)}")
        result[name] = value
    return result


def _reject(constant: str) -> NoReturn:
    """Refuse NaN and Infinity, which are not JSON."""
    raise ValueError("non-finite number in file")


def _describe_name(name: str) -> str:
    return repr(name) if _ECHOABLE_NAME.fullmatch(name) else "(unprintable name)"


def _check_fields(path: Path, where: str, obj: dict[str, Any], expected: frozenset[str]) -> None:
    missing = sorted(expected - obj.keys())
    if missing:
        raise _error(path, f"{where}: missing field(s) {', '.join(missing)}")
    extra = sorted(obj.keys() - expected)
    if extra:
        shown = ", ".join(_describe_name(name) for name in extra)
        raise _error(path, f"{where}: unexpected field(s) {shown}")


def _is_version(value: object) -> bool:
    # bool is an int subclass; `true` must not pass as version 1.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _decode_key(path: Path, where: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise _error(path, f"{where} is not a base64 string")
    try:
        key = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _error(path, f"{where} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise _error(path, f"{where} is {len(key)} bytes, expected {KEY_BYTES}")
    return key


def _parse_entry(path: Path, position: int, entry: object) -> tuple[KeyInfo, bytes | None]:
    where = f"keys[{position}]"
    if not isinstance(entry, dict):
        raise _error(path, f"{where} is not a JSON object")
    _check_fields(path, where, entry, _KEY_FIELDS)
    version = entry["version"]
    if not _is_version(version):
        raise _error(path, f"{where}: version is not a positive integer")
    where = f"{where} (version {version})"
    try:
        state = KeyState(entry["state"])
    except ValueError:
        raise _error(path, f"{where}: state is not active, decrypt_only or retired") from None
    created_at = _parse_time(path, where, entry["created_at"])
    if state is KeyState.RETIRED:
        if entry["key"] is not None:
            raise _error(path, f"{where}: retired key still holds key material")
        return KeyInfo(version, created_at, state), None
    return KeyInfo(version, created_at, state), _decode_key(path, f"{where}: key", entry["key"])


def _parse_time(path: Path, where: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise _error(path, f"{where}: created_at is not a string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _error(path, f"{where}: created_at is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise _error(path, f"{where}: created_at has no UTC offset")
    return parsed.astimezone(UTC)


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


# --- changing the file ---------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` so read-modify-write cycles never interleave."""
    # The lock file is never deleted: unlinking it would let a waiter lock an orphaned inode
    # while a newcomer locks a fresh one, and both would write.
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _write_atomic(path: Path, ring: KeyRing) -> None:
    """Replace ``path`` with ``ring`` so readers see the old file or the new, never a mix."""
    _write_document(path, ring._to_document())


def _write_document(path: Path, document: dict[str, Any]) -> None:
    """Atomically replace ``path`` (0600) with ``document`` as JSON, durably."""
    data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            # The umask can only narrow 0o600, but a narrowed mode could lock the owner out.
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Without syncing the directory the rename itself may not survive a power cut.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def init_keyring(path: str | os.PathLike[str]) -> KeyRing:
    """Create a key ring with version 1 active; refuses to overwrite an existing file."""
    file = Path(path)
    # Only the last directory gets 0o700: parents may be shared system directories.
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(file):
        if os.path.lexists(file):
            raise _error(file, "file already exists; refusing to overwrite a key ring")
        info = KeyInfo(1, _now(), KeyState.ACTIVE)
        ring = KeyRing(file, 1, (info,), _KeyMaterial({1: new_key()}, new_key()))
        _write_atomic(file, ring)
        return KeyRing.load(file)


def rotate_keyring(path: str | os.PathLike[str]) -> KeyRing:
    """Add version max+1 as active; the previous active version becomes decrypt_only."""
    file = Path(path)
    with _locked(file):
        ring = KeyRing.load(file)
        version = max(i.version for i in ring._infos) + 1
        demoted = [
            replace(i, state=KeyState.DECRYPT_ONLY) if i.state is KeyState.ACTIVE else i
            for i in ring._infos
        ]
        infos = (*demoted, KeyInfo(version, _now(), KeyState.ACTIVE))
        keks = {**ring._material.keks, version: new_key()}
        _write_atomic(file, KeyRing(file, version, infos, _KeyMaterial(keks, ring.index_key)))
        return KeyRing.load(file)


def retire_key(path: str | os.PathLike[str], version: int, *, in_use: int) -> KeyRing:
    """Destroy the key material of ``version``; ``in_use`` is the store's count of its DEKs.

    Refused with KeyInUse while any data key still uses the version, or if it is active.
    Retiring an already retired version changes nothing.
    """
    if in_use < 0:
        raise ValueError("in_use must not be negative")
    file = Path(path)
    with _locked(file):
        ring = KeyRing.load(file)
        current = {i.version: i for i in ring._infos}.get(version)
        if current is None:
            raise _error(file, f"key version {version} does not exist")
        if version == ring.active_version:
            raise KeyInUse(
                f"key ring {file}: version {version} is active; rotate before retiring it"
            )
        if in_use > 0:
            raise KeyInUse(
                f"key ring {file}: version {version} still wraps {in_use} data key(s); "
                "rewrap them before retiring it"
            )
        if current.state is KeyState.RETIRED:
            return ring
        infos = tuple(
            replace(i, state=KeyState.RETIRED) if i.version == version else i for i in ring._infos
        )
        keks = {v: k for v, k in ring._material.keks.items() if v != version}
        retired = KeyRing(file, ring.active_version, infos, _KeyMaterial(keks, ring.index_key))
        _write_atomic(file, retired)
        return KeyRing.load(file)


# --- providers -----------------------------------------------------------------------


@runtime_checkable
class KekProvider(Protocol):
    """What the vault needs from a KEK source; a KMS-backed provider implements the same."""

    @property
    def active_version(self) -> int:
        """The version :meth:`wrap` uses."""
        ...

    @property
    def index_key(self) -> bytes:
        """The key for blind indexes."""
        ...

    def wrap(self, dek: bytes, aad: bytes) -> tuple[int, bytes]:
        """Wrap ``dek`` with the active version; return (version, wrapped)."""
        ...

    def unwrap(self, version: int, wrapped: bytes, aad: bytes) -> bytes:
        """Unwrap; DecryptionFailed on bad auth, KeyRingError for unknown/retired versions."""
        ...

    def versions(self) -> list[KeyInfo]:
        """Every version the provider knows, oldest first, without key material."""
        ...

    def check_value(self, version: int) -> bytes:
        """A value the vault records to recognise ``version``'s key later (vault.keys.check)."""
        ...

    def matches_check(self, version: int, value: bytes) -> bool:
        """Whether ``value`` was made by :meth:`check_value` with this very key and index key.

        False for a value made with another key; KeyRingError when it cannot be decided
        (the key service is unreachable).
        """
        ...

    @property
    def generation(self) -> int:
        """Grows whenever key material this process held is withdrawn (see :meth:`renew`).

        The vault drops its cache of unwrapped data keys when it changes, so a withdrawn
        key stops opening records at once rather than when the cache turns over.
        """
        ...

    def is_local(self, version: int) -> bool:
        """Whether wrap/unwrap under ``version`` run in this process, without a network call.

        The vault makes the calls that are not local in a thread, off its event loop.
        """
        ...

    def renew(self) -> None:
        """Re-confirm held key material with its key service (blocking: call in a thread).

        The serving process calls it every refresh interval; a key the service refuses is
        withdrawn here (and :attr:`generation` grows); one it cannot reach stays.
        """
        ...

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the key source if it changed (another process rotated); True if reloaded.

        Unless ``force``, it looks at most every :data:`RELOAD_CHECK_SECONDS`. A changed
        source is adopted only if it continues the one in force: it may add versions and
        retire them, but every version in force stays, with the same key unless retired,
        and the index key stays.
        """
        ...


# How often a serving provider looks (one stat) for a rotation made by another process, so
# new data keys move to the new active version within seconds of `tokenproxy keys rotate`.
RELOAD_CHECK_SECONDS = 2.0


class LocalKekProvider:
    """KekProvider over a local KeyRing; wraps data keys with AES-256-GCM.

    A serving process keeps one provider for its life, while `tokenproxy keys rotate` and
    `keys rewrap` run in other processes. So the provider follows the file: the vault calls
    :meth:`refresh` before it wraps a new data key (one ``stat`` at most every
    :data:`RELOAD_CHECK_SECONDS`), and when ``unwrap`` raises UnknownKeyVersion the vault
    forces a refresh and tries once more (a rewrapped DEK can only name a version that was
    in the file before the rewrap wrote it, so one look is enough). The
    file is re-parsed only when its identity (inode, size, mtime) changed; a changed file
    that fails validation is ignored (the ring validated earlier stays in force) and is
    not parsed again until it changes once more. So is a file that does not continue the
    ring in force (see :meth:`KekProvider.refresh`): another ring entirely, or a version
    whose key changed, would make the data keys this process wraps unreadable to the ring
    the vault recorded; the process keeps the ring it verified at start and logs why.
    """

    __slots__ = ("_ring", "_sealers", "_watch")

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._sealers: dict[int, Sealer] = {}
        self._watch = FileWatch(ring.path)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Self:
        """Load the key ring at ``path``."""
        return cls(KeyRing.load(path))

    def __repr__(self) -> str:
        return f"LocalKekProvider({self._ring!r})"

    @property
    def ring(self) -> KeyRing:
        """The key ring this provider reads."""
        return self._ring

    @property
    def active_version(self) -> int:
        """The version :meth:`wrap` uses."""
        return self._ring.active_version

    @property
    def index_key(self) -> bytes:
        """The key for blind indexes."""
        return self._ring.index_key

    def versions(self) -> list[KeyInfo]:
        """Every version, oldest first, without key material."""
        return self._ring.versions()

    @property
    def generation(self) -> int:
        """Always 0: a key in a local file is withdrawn only by retiring it."""
        return 0

    def is_local(self, version: int) -> bool:
        """Always True: wrapping is AES-GCM in this process."""
        return True

    def renew(self) -> None:
        """Nothing to re-confirm: the file is the key service (``refresh`` follows it)."""

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the key ring if the file changed since it was read; True if reloaded."""
        stamp = self._watch.changed(force=force)
        if stamp is None:
            return False
        try:
            ring = KeyRing.load(self._ring.path)
        except KeyRingError:
            # Mid-life corruption must not take down a service whose validated ring still
            # works; `tokenproxy keys list` and the next start-up report the bad file.
            self._watch.reject(stamp)
            return False
        problem = _discontinuity(self._ring, ring)
        if problem is not None:
            # Another ring entirely (restored from the wrong backup?): blind indexes would
            # silently stop matching and new data keys would be wrapped under a key the
            # vault's own ring lacks, so keep the one this process verified.
            _log.warning(
                "key ring %s changed into a ring this process refuses (%s); keeping the "
                "ring in force",
                _shown(self._ring.path),
                problem,
            )
            self._watch.reject(stamp)
            return False
        self._ring, self._sealers = ring, {}
        self._watch.accept(stamp)
        return True

    def check_value(self, version: int) -> bytes:
        """HMAC under a key derived from ``version``'s KEK (a classic key check value)."""
        return key_check_mac(self._ring.kek(version), "kek", str(version))

    def matches_check(self, version: int, value: bytes) -> bool:
        """Whether ``value`` is this ring's check value of ``version`` (constant time)."""
        return hmac.compare_digest(self.check_value(version), value)

    def rotate(self) -> int:
        """Add a version to the file and make it active here too; returns it."""
        ring = rotate_keyring(self._ring.path)
        self.refresh(force=True)
        return ring.active_version

    def retire(self, version: int, *, in_use: int) -> None:
        """Destroy ``version``'s material in the file (KeyInUse while in use) and here."""
        retire_key(self._ring.path, version, in_use=in_use)
        self.refresh(force=True)

    def wrap(self, dek: bytes, aad: bytes) -> tuple[int, bytes]:
        """Wrap ``dek`` with the active version; return (version, wrapped)."""
        if len(dek) != KEY_BYTES:
            raise ValueError(f"data key must be {KEY_BYTES} bytes")
        # No refresh here: the caller built ``aad`` for `active_version` as it read it.
        version = self._ring.active_version
        return version, self._sealer(version).seal(dek, aad)

    def unwrap(self, version: int, wrapped: bytes, aad: bytes) -> bytes:
        """Unwrap; DecryptionFailed on bad auth, UnknownKeyVersion, KeyRingError if retired."""
        return self._sealer(version).open(wrapped, aad)

    def _sealer(self, version: int) -> Sealer:
        sealer = self._sealers.get(version)
        if sealer is None:
            # A racing thread may build a second Sealer for the same key; both are equal,
            # so a lock would cost more than the duplicate.
            sealer = Sealer(self._ring.kek(version))
            self._sealers[version] = sealer
        return sealer


class FileWatch:
    """Throttled change detection for a key file a running process re-reads.

    ``changed()`` stats the file at most every RELOAD_CHECK_SECONDS (unless forced) and
    returns its new stamp when it differs from the accepted one and from one already
    found bad; the caller loads the file and then calls ``accept`` or ``reject``.
    """

    __slots__ = ("_bad", "_checked_at", "_stamp", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = _file_stamp(path)
        self._bad: tuple[int, int, int] | None = None
        self._checked_at = time.monotonic()

    def changed(self, *, force: bool = False) -> tuple[int, int, int] | None:
        """The file's new stamp if it changed since the accepted load, else None."""
        now = time.monotonic()
        if not force and now - self._checked_at < RELOAD_CHECK_SECONDS:
            return None
        self._checked_at = now
        stamp = _file_stamp(self.path)
        if stamp is None or stamp in (self._stamp, self._bad):
            return None
        return stamp

    def accept(self, stamp: tuple[int, int, int]) -> None:
        """The file at ``stamp`` is now the one in force."""
        self._stamp = stamp

    def reject(self, stamp: tuple[int, int, int]) -> None:
        """Ignore the file at ``stamp`` (bad or foreign) until it changes again."""
        self._bad = stamp


def _discontinuity(current: KeyRing, candidate: KeyRing) -> str | None:
    """Why ``candidate`` may not replace ``current`` in a running process, or None."""
    if not hmac.compare_digest(candidate.index_key, current.index_key):
        return "its index key differs"
    offered = {info.version: info for info in candidate._infos}
    for info in current._infos:
        other = offered.get(info.version)
        if other is None:
            return f"key version {info.version} is missing"
        if info.state is KeyState.RETIRED:
            if other.state is not KeyState.RETIRED:
                return f"key version {info.version} was retired"
            continue
        if other.state is KeyState.RETIRED:
            continue
        same = hmac.compare_digest(
            current._material.keks[info.version], candidate._material.keks[info.version]
        )
        if not same:
            return f"key version {info.version} holds another key"
    return None


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """The file's identity: rotations replace it by rename, so the inode changes."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
