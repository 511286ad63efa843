"""KEKs held by AWS KMS: a KekProvider that keeps no key material on disk.

Design:

* **Versions map to KMS keys.** The key map file (``TOKENPROXY_KEYRING``, format
  ``tokenproxy-kms-keyring/1``) lists our versions, each naming a KMS key id, ARN or
  alias, with the same states as the local ring (active / decrypt_only / retired). A
  version is *ours*: KMS's own yearly rotation of a key's backing material happens inside
  one version, transparently. ``keys rotate`` adds a version for a *different* KMS key
  (``TOKENPROXY_KMS_KEY_ID``), e.g. a new key after a suspected compromise or an account
  move; ``keys retire`` marks a version unusable here (schedule the KMS key's deletion in
  AWS afterwards, once nothing else uses it).
* **Wrapping** is KMS ``Encrypt`` / ``Decrypt`` of the 32-byte DEK with an
  EncryptionContext carrying the DEK's associated data (its id and our version), so a
  wrapped key moved to another row fails at KMS exactly as the local AES-GCM wrap fails.
  ``Decrypt`` is also pinned to the version's KeyId, so a blob from another key is refused.
* **Check values** (recorded in the vault, see ``vault.keys.check``): per version, a KMS
  ``Encrypt`` of an HMAC of the version under the index key; it matches only when that
  version's KMS key decrypts it *and* the plaintext is what this index key makes.
* **The blind-index key** is a KMS data key (``GenerateDataKey``) made once at
  ``keys init``; the file stores only its KMS ciphertext, and every process decrypts it
  once at start. It stays wrapped under the active version's KMS key (re-encrypted at
  each rotation), so retiring an old KMS key can never strand it. We keep it in this file
  rather than in the vault database so that the database alone (or a backup of it) holds
  nothing KMS would decrypt for the index key's context without the file, and because the
  local ring keeps its index key the same way: one place to look in both modes.

The file holds no key material usable without KMS access, but is still required to be
0600 like the local ring, and loading fails closed with the same one-line errors.
boto3 is an optional dependency (``pip install 'tokenproxy[kms]'``), imported only here.
KMS calls are synchronous network calls; the vault's DEK cache keeps them off the read
path after the first use of each data key.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

from vault.crypto import KEY_BYTES, key_check_mac
from vault.errors import DecryptionFailed, KeyInUse, KeyRingError, UnknownKeyVersion
from vault.keys.ring import (
    FileWatch,
    KeyInfo,
    KeyState,
    _check_fields,
    _error,
    _format_time,
    _is_version,
    _locked,
    _now,
    _parse_json,
    _parse_time,
    _read_private_file,
    _write_document,
)

__all__ = ["KMS_KEYRING_FORMAT", "KmsKekProvider", "init_kms_keyring", "kms_client"]

KMS_KEYRING_FORMAT = "tokenproxy-kms-keyring/1"
_TOP_FIELDS = frozenset({"format", "active", "index_key_wrapped", "keys"})
_KEY_FIELDS = frozenset({"version", "created_at", "state", "kms_key_id"})
_INDEX_CONTEXT = {"tokenproxy:purpose": "index-key"}
# What a KMS answer says when a ciphertext was not made by that key and context: a
# mismatch, as opposed to KMS being unreachable or the key disabled (undecidable).
_NOT_OURS = frozenset(
    {"InvalidCiphertextException", "IncorrectKeyException", "ValidationException"}
)
_log = logging.getLogger("vault.keys.kms")
_MAX_KEY_ID = 2048


def kms_client(*, endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 KMS client; credentials come from the standard AWS chain (env, role, ...)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise KeyRingError(
            "TOKENPROXY_KEK_PROVIDER=aws-kms needs boto3: pip install 'tokenproxy[kms]'"
        ) from None
    # botocore logs whole response bodies at DEBUG, and a KMS Decrypt response body *is* the
    # plaintext key. Whatever level the host application sets, those lines must not exist.
    for name in ("botocore", "boto3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # botocore's defaults (60 s connect timeout, legacy retries) would hold a request, or
    # start-up, for minutes when KMS is unreachable; fail in seconds instead.
    config = Config(
        connect_timeout=3, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}
    )
    return boto3.client(
        "kms",
        endpoint_url=endpoint_url,
        region_name=region or os.environ.get("AWS_REGION"),
        config=config,
    )


def _check_context(version: int) -> dict[str, str]:
    return {"tokenproxy:purpose": "key-check", "tokenproxy:version": str(version)}


def _dek_context(aad: bytes) -> dict[str, str]:
    return {"tokenproxy:purpose": "dek", "tokenproxy:aad": base64.b64encode(aad).decode()}


@dataclass(frozen=True, slots=True)
class _Entry:
    info: KeyInfo
    kms_key_id: str


@dataclass(frozen=True, slots=True)
class _KeyMap:
    path: Path
    active: int
    index_key_wrapped: bytes
    entries: tuple[_Entry, ...]

    def entry(self, version: int) -> _Entry:
        for entry in self.entries:
            if entry.info.version == version:
                if entry.info.state is KeyState.RETIRED:
                    raise _error(self.path, f"key version {version} is retired")
                return entry
        raise UnknownKeyVersion(f"key ring {self.path}: key version {version} does not exist")

    def document(self) -> dict[str, Any]:
        return {
            "format": KMS_KEYRING_FORMAT,
            "active": self.active,
            "index_key_wrapped": base64.b64encode(self.index_key_wrapped).decode(),
            "keys": [
                {
                    "version": e.info.version,
                    "created_at": _format_time(e.info.created_at),
                    "state": e.info.state.value,
                    "kms_key_id": e.kms_key_id,
                }
                for e in self.entries
            ],
        }


def _load_map(path: Path) -> _KeyMap:
    doc = _parse_json(path, _read_private_file(path))
    if not isinstance(doc, dict):
        raise _error(path, "top level is not a JSON object")
    if doc.get("format") != KMS_KEYRING_FORMAT:
        raise _error(path, f"format tag is not {KMS_KEYRING_FORMAT!r}")
    _check_fields(path, "top level", doc, _TOP_FIELDS)
    active = doc["active"]
    if not _is_version(active):
        raise _error(path, "active is not a positive integer")
    try:
        wrapped = base64.b64decode(str(doc["index_key_wrapped"]).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _error(path, "index_key_wrapped is not valid base64") from None
    if not wrapped:
        raise _error(path, "index_key_wrapped is empty")
    raw = doc["keys"]
    if not isinstance(raw, list) or not raw:
        raise _error(path, "keys is not a non-empty list")
    entries: list[_Entry] = []
    for position, item in enumerate(raw):
        where = f"keys[{position}]"
        if not isinstance(item, dict):
            raise _error(path, f"{where} is not a JSON object")
        _check_fields(path, where, item, _KEY_FIELDS)
        version = item["version"]
        if not _is_version(version):
            raise _error(path, f"{where}: version is not a positive integer")
        if any(e.info.version == version for e in entries):
            raise _error(path, f"version {version} appears more than once")
        try:
            state = KeyState(item["state"])
        except ValueError:
            raise _error(path, f"{where}: state is not active, decrypt_only or retired") from None
        key_id = item["kms_key_id"]
        if not isinstance(key_id, str) or not 0 < len(key_id) <= _MAX_KEY_ID:
            raise _error(path, f"{where}: kms_key_id is not a KMS key id, ARN or alias")
        created = _parse_time(path, where, item["created_at"])
        entries.append(_Entry(KeyInfo(version, created, state), key_id))
    actives = [e.info.version for e in entries if e.info.state is KeyState.ACTIVE]
    if actives != [active]:
        raise _error(path, f"active is {active} but the active key(s) are {actives or 'none'}")
    entries.sort(key=lambda e: e.info.version)
    return _KeyMap(path, active, wrapped, tuple(entries))


def init_kms_keyring(path: str | os.PathLike[str], client: Any, kms_key_id: str) -> None:
    """Create a key map with version 1 on ``kms_key_id`` and a fresh KMS-made index key."""
    file = Path(path)
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(file):
        if os.path.lexists(file):
            raise _error(file, "file already exists; refusing to overwrite a key ring")
        try:
            made = client.generate_data_key(
                KeyId=kms_key_id, KeySpec="AES_256", EncryptionContext=_INDEX_CONTEXT
            )
        except Exception:  # noqa: BLE001 - botocore errors carry request detail; never echo it
            raise _error(file, f"KMS could not make a data key with {kms_key_id!r}") from None
        entry = _Entry(KeyInfo(1, _now(), KeyState.ACTIVE), kms_key_id)
        _write_document(file, _KeyMap(file, 1, made["CiphertextBlob"], (entry,)).document())


class KmsKekProvider:
    """KekProvider whose KEKs live in AWS KMS (see the module docstring)."""

    __slots__ = ("_client", "_index_key", "_map", "_rotate_to", "_watch")

    def __init__(self, path: Path, client: Any, *, rotate_to: str | None = None) -> None:
        self._client = client
        self._rotate_to = rotate_to
        self._map = _load_map(path)
        self._watch = FileWatch(path)
        self._index_key = self._decrypt_index_key(self._map)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        rotate_to: str | None = None,
    ) -> Self:
        """Load the key map and decrypt the index key; ``rotate_to`` is the next KMS key."""
        return cls(
            Path(path), kms_client(endpoint_url=endpoint_url, region=region), rotate_to=rotate_to
        )

    def __repr__(self) -> str:
        versions = ", ".join(f"{e.info.version}:{e.info.state.value}" for e in self._map.entries)
        path = str(self._map.path)
        return f"KmsKekProvider(path={path!r}, active={self._map.active}, versions=[{versions}])"

    def _decrypt_index_key(self, keymap: _KeyMap) -> bytes:
        try:
            answer = self._client.decrypt(
                CiphertextBlob=keymap.index_key_wrapped, EncryptionContext=_INDEX_CONTEXT
            )
        except Exception:  # noqa: BLE001 - no library text in our errors
            raise _error(keymap.path, "KMS refused to decrypt the index key") from None
        key: bytes = answer["Plaintext"]
        if len(key) != KEY_BYTES:
            raise _error(keymap.path, "the index key KMS returned is not 32 bytes")
        return key

    @property
    def active_version(self) -> int:
        """The version :meth:`wrap` uses."""
        return self._map.active

    @property
    def index_key(self) -> bytes:
        """The key for blind indexes (decrypted once by KMS)."""
        return self._index_key

    def versions(self) -> list[KeyInfo]:
        """Every version, oldest first."""
        return [e.info for e in self._map.entries]

    def kms_key_id(self, version: int) -> str:
        """The KMS key a version maps to."""
        return self._map.entry(version).kms_key_id

    def check_value(self, version: int) -> bytes:
        """KMS ciphertext, under ``version``'s key, of an HMAC under the index key."""
        entry = self._map.entry(version)
        try:
            answer = self._client.encrypt(
                KeyId=entry.kms_key_id,
                Plaintext=key_check_mac(self._index_key, "kek", str(version)),
                EncryptionContext=_check_context(version),
            )
        except Exception:  # noqa: BLE001 - no library text in our errors
            raise KeyRingError(f"KMS refused to make a check value of version {version}") from None
        blob: bytes = answer["CiphertextBlob"]
        return blob

    def matches_check(self, version: int, value: bytes) -> bool:
        """Whether ``version``'s KMS key decrypts ``value`` to this index key's HMAC."""
        entry = self._map.entry(version)
        try:
            answer = self._client.decrypt(
                KeyId=entry.kms_key_id,
                CiphertextBlob=value,
                EncryptionContext=_check_context(version),
            )
        except Exception as exc:  # noqa: BLE001 - translated below, never echoed
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in _NOT_OURS:
                return False
            raise KeyRingError(f"KMS could not check key version {version}") from None
        expected = key_check_mac(self._index_key, "kek", str(version))
        return hmac.compare_digest(answer["Plaintext"], expected)

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the key map if the file changed (same rules as LocalKekProvider)."""
        stamp = self._watch.changed(force=force)
        if stamp is None:
            return False
        try:
            keymap = _load_map(self._map.path)
        except KeyRingError:
            self._watch.reject(stamp)
            return False
        problem = _discontinuity(self._map, keymap)
        if problem is not None:
            _log.warning(
                "key map %s changed into one this process refuses (%s); keeping the map in force",
                self._map.path,
                problem,
            )
            self._watch.reject(stamp)
            return False
        self._map = keymap
        self._watch.accept(stamp)
        return True

    def wrap(self, dek: bytes, aad: bytes) -> tuple[int, bytes]:
        """KMS Encrypt under the active version's key, bound to ``aad``."""
        if len(dek) != KEY_BYTES:
            raise ValueError(f"data key must be {KEY_BYTES} bytes")
        version = self._map.active
        try:
            answer = self._client.encrypt(
                KeyId=self._map.entry(version).kms_key_id,
                Plaintext=dek,
                EncryptionContext=_dek_context(aad),
            )
        except Exception:  # noqa: BLE001 - no library text in our errors
            raise KeyRingError(f"KMS refused to wrap a data key under version {version}") from None
        wrapped: bytes = answer["CiphertextBlob"]
        return version, wrapped

    def unwrap(self, version: int, wrapped: bytes, aad: bytes) -> bytes:
        """KMS Decrypt pinned to the version's key; DecryptionFailed on any auth failure."""
        try:
            entry = self._map.entry(version)
        except UnknownKeyVersion:
            if not self.refresh(force=True):
                raise
            entry = self._map.entry(version)
        try:
            answer = self._client.decrypt(
                KeyId=entry.kms_key_id,
                CiphertextBlob=wrapped,
                EncryptionContext=_dek_context(aad),
            )
        except Exception as exc:  # noqa: BLE001 - translated below, never echoed
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in {"InvalidCiphertextException", "IncorrectKeyException"}:
                raise DecryptionFailed("ciphertext failed authentication") from None
            raise KeyRingError(f"KMS could not unwrap a data key of version {version}") from None
        key: bytes = answer["Plaintext"]
        if len(key) != KEY_BYTES:
            raise DecryptionFailed("ciphertext failed authentication")
        return key

    def rotate(self) -> int:
        """Add a version on the configured next KMS key; the index key moves to it too."""
        if not self._rotate_to:
            raise KeyRingError("set TOKENPROXY_KMS_KEY_ID to the KMS key the new version uses")
        path = self._map.path
        with _locked(path):
            keymap = _load_map(path)
            if self._rotate_to == keymap.entry(keymap.active).kms_key_id:
                raise _error(path, "TOKENPROXY_KMS_KEY_ID is the active version's KMS key already")
            try:
                wrapped = self._client.encrypt(
                    KeyId=self._rotate_to,
                    Plaintext=self._index_key,
                    EncryptionContext=_INDEX_CONTEXT,
                )["CiphertextBlob"]
            except Exception:  # noqa: BLE001 - no library text in our errors
                raise _error(path, f"KMS refused to encrypt with {self._rotate_to!r}") from None
            version = max(e.info.version for e in keymap.entries) + 1
            demoted = [
                replace(e, info=replace(e.info, state=KeyState.DECRYPT_ONLY))
                if e.info.state is KeyState.ACTIVE
                else e
                for e in keymap.entries
            ]
            entries = (*demoted, _Entry(KeyInfo(version, _now(), KeyState.ACTIVE), self._rotate_to))
            _write_document(path, _KeyMap(path, version, wrapped, entries).document())
        self.refresh(force=True)
        return version

    def retire(self, version: int, *, in_use: int) -> None:
        """Mark ``version`` retired (KeyInUse while in use or active)."""
        path = self._map.path
        with _locked(path):
            keymap = _load_map(path)
            if not any(e.info.version == version for e in keymap.entries):
                raise _error(path, f"key version {version} does not exist")
            if version == keymap.active:
                raise KeyInUse(
                    f"key ring {path}: version {version} is active; rotate before retiring it"
                )
            if in_use > 0:
                raise KeyInUse(
                    f"key ring {path}: version {version} still wraps {in_use} data key(s); "
                    "rewrap them before retiring it"
                )
            entries = tuple(
                replace(e, info=replace(e.info, state=KeyState.RETIRED))
                if e.info.version == version
                else e
                for e in keymap.entries
            )
            _write_document(path, replace(keymap, entries=entries).document())
        self.refresh(force=True)


def _discontinuity(current: _KeyMap, candidate: _KeyMap) -> str | None:
    """Why ``candidate`` may not replace ``current`` in a running process, or None.

    As for the local ring: versions may be added and retired, never dropped, revived or
    moved to another KMS key (the index key is decrypted once per process and stays).
    """
    offered = {e.info.version: e for e in candidate.entries}
    for entry in current.entries:
        version = entry.info.version
        other = offered.get(version)
        if other is None:
            return f"key version {version} is missing"
        if entry.info.state is KeyState.RETIRED:
            if other.info.state is not KeyState.RETIRED:
                return f"key version {version} was retired"
            continue
        if other.info.state is not KeyState.RETIRED and other.kms_key_id != entry.kms_key_id:
            return f"key version {version} names another KMS key"
    return None
