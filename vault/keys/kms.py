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
* **KMS protects one local KEK per version, never each data key.** ``keys init`` and
  ``keys rotate`` ask KMS for a data key (``GenerateDataKey``, EncryptionContext naming
  the purpose and the version) and store only its KMS ciphertext (``kek_wrapped``). A
  process decrypts each version's KEK once at start; data keys are then wrapped locally
  with AES-256-GCM exactly as the local ring does, so no request ever waits for KMS (the
  way Vault's auto-unseal and the AWS Encryption SDK's key caching keep KMS off the hot
  path). ``renew`` asks KMS again every refresh interval (``TOKENPROXY_KMS_REFRESH_SECONDS``,
  run in a thread by the serving process): a key KMS *refuses* (disabled, pending
  deletion, access denied) is dropped from memory, so tokenize and resolve under that
  version stop within one interval (fail closed); a KMS that merely does not answer changes
  nothing, so an outage after start does not stop the service.
* **Versions made before that** (no ``kek_wrapped``) keep KMS ``Encrypt`` / ``Decrypt``
  of each 32-byte DEK, with an EncryptionContext carrying the DEK's associated data and
  ``Decrypt`` pinned to the version's KeyId; the vault makes those calls in a thread.
  ``keys rotate`` then ``keys rewrap`` moves their data keys to a local-wrap version.
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
KMS calls are synchronous network calls: at start, at rotation, in ``renew`` and (for the
older per-DEK versions only) in wrap/unwrap, which :meth:`KmsKekProvider.is_local` tells
the vault to run off its event loop.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

from vault.crypto import KEY_BYTES, Sealer, key_check_mac
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
_ENVELOPE_FIELDS = _KEY_FIELDS | {"kek_wrapped"}
_INDEX_CONTEXT = {"tokenproxy:purpose": "index-key"}
# What a KMS answer says when a ciphertext was not made by that key and context: a
# mismatch, as opposed to KMS being unreachable or the key disabled (undecidable).
_NOT_OURS = frozenset(
    {"InvalidCiphertextException", "IncorrectKeyException", "ValidationException"}
)
# What KMS answers when it will not use a key for us (disabled, pending deletion, access
# revoked, wrong key): the key is withdrawn, and `renew` drops it. Anything else (no
# answer, throttling, KMS's internal errors) says nothing about the key: keep it.
_REFUSED = frozenset(
    {
        "DisabledException",
        "KMSInvalidStateException",
        "NotFoundException",
        "AccessDeniedException",
        "InvalidCiphertextException",
        "IncorrectKeyException",
    }
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


def _kek_context(version: int) -> dict[str, str]:
    return {"tokenproxy:purpose": "kek", "tokenproxy:version": str(version)}


def _error_code(exc: Exception) -> str:
    code: str = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return code


def _dek_context(aad: bytes) -> dict[str, str]:
    return {"tokenproxy:purpose": "dek", "tokenproxy:aad": base64.b64encode(aad).decode()}


class _KeyWithdrawn(Exception):
    """KMS reports a key's state as other than Enabled."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.code = (
            "KMSInvalidStateException" if state == "PendingDeletion" else "DisabledException"
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    info: KeyInfo
    kms_key_id: str
    # The version's local KEK as KMS ciphertext; None for a version that wraps each data
    # key at KMS (made before local wrapping).
    kek_wrapped: bytes | None = None


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
            "keys": [_entry_document(e) for e in self.entries],
        }


def _entry_document(entry: _Entry) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": entry.info.version,
        "created_at": _format_time(entry.info.created_at),
        "state": entry.info.state.value,
        "kms_key_id": entry.kms_key_id,
    }
    if entry.kek_wrapped is not None:
        doc["kek_wrapped"] = base64.b64encode(entry.kek_wrapped).decode()
    return doc


def _decode_blob(path: Path, where: str, value: object) -> bytes:
    try:
        blob = base64.b64decode(str(value).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _error(path, f"{where} is not valid base64") from None
    if not blob:
        raise _error(path, f"{where} is empty")
    return blob


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
    wrapped = _decode_blob(path, "index_key_wrapped", doc["index_key_wrapped"])
    raw = doc["keys"]
    if not isinstance(raw, list) or not raw:
        raise _error(path, "keys is not a non-empty list")
    entries: list[_Entry] = []
    for position, item in enumerate(raw):
        where = f"keys[{position}]"
        if not isinstance(item, dict):
            raise _error(path, f"{where} is not a JSON object")
        _check_fields(path, where, item, _ENVELOPE_FIELDS if "kek_wrapped" in item else _KEY_FIELDS)
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
        kek = (
            _decode_blob(path, f"{where}: kek_wrapped", item["kek_wrapped"])
            if "kek_wrapped" in item
            else None
        )
        entries.append(_Entry(KeyInfo(version, created, state), key_id, kek))
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
        kek = _new_wrapped_kek(file, client, kms_key_id, 1)
        entry = _Entry(KeyInfo(1, _now(), KeyState.ACTIVE), kms_key_id, kek)
        _write_document(file, _KeyMap(file, 1, made["CiphertextBlob"], (entry,)).document())


def _new_wrapped_kek(path: Path, client: Any, kms_key_id: str, version: int) -> bytes:
    """A fresh local KEK for ``version``, as KMS ciphertext only (its plaintext is dropped)."""
    try:
        made = client.generate_data_key(
            KeyId=kms_key_id, KeySpec="AES_256", EncryptionContext=_kek_context(version)
        )
    except Exception:  # noqa: BLE001 - botocore errors carry request detail; never echo it
        raise _error(path, f"KMS could not make a data key with {kms_key_id!r}") from None
    blob: bytes = made["CiphertextBlob"]
    return blob


class KmsKekProvider:
    """KekProvider whose KEKs live in AWS KMS (see the module docstring)."""

    __slots__ = (
        "_client",
        "_generation",
        "_index_key",
        "_keks",
        "_lock",
        "_map",
        "_rotate_to",
        "_watch",
    )

    def __init__(self, path: Path, client: Any, *, rotate_to: str | None = None) -> None:
        self._client = client
        self._rotate_to = rotate_to
        self._map = _load_map(path)
        self._watch = FileWatch(path)
        self._index_key = self._decrypt_index_key(self._map)
        # Unlocked local KEKs by version: filled at start (every one must unlock, or start-up
        # fails closed), kept through KMS outages, emptied of a key KMS refuses in `renew`.
        self._keks: dict[int, Sealer] = {}
        self._generation = 0
        # `refresh` and `renew` run in worker threads and both replace `_keks`; the event
        # loop only reads it, so only they take the lock.
        self._lock = threading.Lock()
        for entry in self._map.entries:
            if entry.kek_wrapped is not None and entry.info.state is not KeyState.RETIRED:
                self._keks[entry.info.version] = self._unlock(self._map.path, entry)

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

    def _unlock(self, path: Path, entry: _Entry) -> Sealer:
        """KMS Decrypt of a version's local KEK (KeyRingError naming the version if refused)."""
        version = entry.info.version
        try:
            answer = self._client.decrypt(
                KeyId=entry.kms_key_id,
                CiphertextBlob=entry.kek_wrapped,
                EncryptionContext=_kek_context(version),
            )
        except Exception:  # noqa: BLE001 - no library text in our errors
            raise _error(path, f"KMS refused to unlock key version {version}") from None
        key: bytes = answer["Plaintext"]
        if len(key) != KEY_BYTES:
            raise _error(path, f"KMS returned a key for key version {version} that is not 32 bytes")
        return Sealer(key)

    @property
    def active_version(self) -> int:
        """The version :meth:`wrap` uses."""
        return self._map.active

    @property
    def generation(self) -> int:
        """Grows each time `renew` withdraws a key; caches of data keys must then be dropped."""
        return self._generation

    def is_local(self, version: int) -> bool:
        """Whether wrap/unwrap under ``version`` stay in this process (no KMS call)."""
        for entry in self._map.entries:
            if entry.info.version == version:
                return entry.kek_wrapped is not None
        return True  # unknown: unwrap fails (or refreshes) without asking KMS

    def renew(self) -> None:
        """Ask KMS again for every version's KEK: drop those it refuses, keep the rest.

        Blocking (one KMS call per local-wrap version): run it in a thread. A key that KMS
        refuses (disabled, scheduled for deletion, access revoked) stops working here at
        once; a KMS that does not answer leaves every key as it was, and a key enabled
        again comes back at the next call.
        """
        with self._lock:
            self._renew()

    def _renew(self) -> None:
        for entry in self._map.entries:
            version = entry.info.version
            if entry.kek_wrapped is None or entry.info.state is KeyState.RETIRED:
                continue
            try:
                self._check_state(entry.kms_key_id)
                answer = self._client.decrypt(
                    KeyId=entry.kms_key_id,
                    CiphertextBlob=entry.kek_wrapped,
                    EncryptionContext=_kek_context(version),
                )
            except Exception as exc:  # noqa: BLE001 - classified below, never echoed
                code = _error_code(exc) or getattr(exc, "code", "")
                if code in _REFUSED:
                    if self._keks.pop(version, None) is not None:
                        self._generation += 1
                        _log.warning(
                            "KMS refuses the key of version %s (%s): it is locked until KMS "
                            "accepts it again",
                            version,
                            code,
                        )
                else:
                    _log.warning(
                        "KMS did not confirm the key of version %s (%s); keeping it unlocked",
                        version,
                        code or type(exc).__name__,
                    )
                continue
            key: bytes = answer["Plaintext"]
            if len(key) == KEY_BYTES and version not in self._keks:
                self._keks[version] = Sealer(key)
                _log.warning("KMS accepts the key of version %s again: unlocked", version)

    def _check_state(self, kms_key_id: str) -> None:
        """Raise _KeyWithdrawn when KMS reports the key other than Enabled.

        AWS's Decrypt refuses a disabled key by itself; the key's state says so even where
        Decrypt does not (KMS emulators, a key pending deletion whose grants still work).
        A DescribeKey the role may not call tells nothing, and nothing changes.
        """
        try:
            state = self._client.describe_key(KeyId=kms_key_id)["KeyMetadata"]["KeyState"]
        except Exception:  # noqa: BLE001 - no permission or no answer: Decrypt decides
            return
        if state != "Enabled":
            raise _KeyWithdrawn(state)

    def _local(self, version: int) -> Sealer | None:
        """The version's unlocked KEK; None for a per-DEK KMS version; KeyRingError if locked."""
        entry = self._map.entry(version)
        if entry.kek_wrapped is None:
            return None
        sealer = self._keks.get(version)
        if sealer is None:
            raise KeyRingError(
                f"key version {version} is locked: KMS refused its key at the last check"
            )
        return sealer

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
        """Re-read the key map if the file changed (same rules as LocalKekProvider).

        A new version's KEK is unlocked at KMS before the map is adopted: blocking, so the
        vault calls this in a thread.
        """
        with self._lock:
            return self._refresh(force=force)

    def _refresh(self, *, force: bool) -> bool:
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
        known = {e.info.version for e in self._map.entries}
        unlocked: dict[int, Sealer] = {}
        try:
            for entry in keymap.entries:
                version = entry.info.version
                if entry.kek_wrapped is None or entry.info.state is KeyState.RETIRED:
                    continue
                if version in self._keks:
                    unlocked[version] = self._keks[version]
                elif version not in known:  # a known one missing here was locked by `renew`
                    unlocked[version] = self._unlock(keymap.path, entry)
        except KeyRingError:
            # KMS cannot unlock a new version now: keep the map in force and try again at
            # the next look (the stamp is neither accepted nor marked bad).
            _log.warning("key map %s: a new version's key could not be unlocked yet", keymap.path)
            return False
        self._map, self._keks = keymap, unlocked
        self._watch.accept(stamp)
        return True

    def wrap(self, dek: bytes, aad: bytes) -> tuple[int, bytes]:
        """Wrap under the active version's KEK (locally, or at KMS for a per-DEK version)."""
        if len(dek) != KEY_BYTES:
            raise ValueError(f"data key must be {KEY_BYTES} bytes")
        version = self._map.active
        sealer = self._local(version)
        if sealer is not None:
            return version, sealer.seal(dek, aad)
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
        """Unwrap under ``version``; DecryptionFailed on any auth failure.

        UnknownKeyVersion for a version this map lacks: the vault refreshes and retries.
        """
        sealer = self._local(version)
        if sealer is not None:
            return sealer.open(wrapped, aad)
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
            kek = _new_wrapped_kek(path, self._client, self._rotate_to, version)
            demoted = [
                replace(e, info=replace(e.info, state=KeyState.DECRYPT_ONLY))
                if e.info.state is KeyState.ACTIVE
                else e
                for e in keymap.entries
            ]
            entries = (
                *demoted,
                _Entry(KeyInfo(version, _now(), KeyState.ACTIVE), self._rotate_to, kek),
            )
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
        if other.info.state is not KeyState.RETIRED and (
            other.kms_key_id != entry.kms_key_id or other.kek_wrapped != entry.kek_wrapped
        ):
            return f"key version {version} names another KMS key"
    return None
