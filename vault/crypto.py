"""AEAD envelope primitives: AES-256-GCM sealing, associated data and blind indexes.

A sealed blob is ``FORMAT_V1 || nonce (12 bytes) || ciphertext || tag (16 bytes)``.
Every failure to open one raises the same opaque :class:`DecryptionFailed`, so a caller
(or an attacker probing the API) cannot tell a bad format byte from a forged tag.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault.errors import DecryptionFailed

__all__ = [
    "FORMAT_V1",
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "Sealer",
    "blind_index",
    "dek_aad",
    "derive_subkey",
    "key_check_mac",
    "new_key",
    "open_sealed",
    "record_aad",
    "seal",
]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
FORMAT_V1 = b"\x01"

_HEADER_BYTES = len(FORMAT_V1) + NONCE_BYTES
_MIN_BLOB_BYTES = _HEADER_BYTES + TAG_BYTES
_FAILED = "ciphertext failed authentication"

# Distinct labels keep each use of a key in its own domain: a record's AAD can never
# equal a wrapped DEK's AAD, and a blind index can never equal one made for another purpose.
_RECORD_AAD_LABEL = b"tokenproxy/record/v1\x00"
_DEK_AAD_LABEL = b"tokenproxy/dek/v1\x00"
_BLIND_INDEX_LABEL = b"tokenproxy/blind-index/v1\x00"
_SUBKEY_LABEL = b"tokenproxy/subkey/v1\x00"
_KEY_CHECK_LABEL = b"tokenproxy/key-check/v1\x00"
_U64_MAX = 2**64 - 1


def new_key() -> bytes:
    """Return a fresh random 256-bit key."""
    return secrets.token_bytes(KEY_BYTES)


class Sealer:
    """AES-256-GCM under one key, holding the cipher object so hot paths build it once."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        # AESGCM also accepts 128/192-bit keys; refusing them stops a truncated key
        # from silently downgrading the cipher.
        if len(key) != KEY_BYTES:
            raise ValueError(f"key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<key redacted>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` bound to ``aad`` under a random nonce."""
        # Random 96-bit nonces are safe for up to 2**32 messages per key (SP 800-38D 8.3);
        # data keys are per record or per customer, far below that bound.
        return self._seal_with_nonce(secrets.token_bytes(NONCE_BYTES), plaintext, aad)

    def _seal_with_nonce(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Seal with a caller-chosen nonce; only known-answer tests may call this."""
        return FORMAT_V1 + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Return the plaintext of ``blob`` or raise :class:`DecryptionFailed`."""
        # `from None` everywhere so no path attaches library text or context to the error.
        if len(blob) < _MIN_BLOB_BYTES or blob[:1] != FORMAT_V1:
            raise DecryptionFailed(_FAILED) from None
        view = memoryview(blob)
        try:
            return self._aead.decrypt(view[1:_HEADER_BYTES], view[_HEADER_BYTES:], aad)
        except (InvalidTag, OverflowError):
            # OverflowError: a blob or AAD over 2**31 bytes cannot be genuine either.
            raise DecryptionFailed(_FAILED) from None


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Seal ``plaintext`` under ``key``; use :class:`Sealer` when the key is reused."""
    return Sealer(key).seal(plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Open a blob made by :func:`seal`; every failure raises :class:`DecryptionFailed`."""
    try:
        sealer = Sealer(key)
    except ValueError:
        raise DecryptionFailed(_FAILED) from None
    return sealer.open(blob, aad)


def _frame(label: bytes, *fields: str) -> bytes:
    """Join fields after ``label`` with 4-byte length prefixes, so no two inputs collide."""
    parts = [label]
    for field in fields:
        encoded = field.encode("utf-8")
        parts.append(struct.pack(">I", len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


def record_aad(token: str, kind: str, dek_id: str) -> bytes:
    """Associated data binding a record ciphertext to its token, kind and data key."""
    return _frame(_RECORD_AAD_LABEL, token, kind, dek_id)


def dek_aad(dek_id: str, kek_version: int) -> bytes:
    """Associated data binding a wrapped data key to its id and KEK version."""
    if not 0 <= kek_version <= _U64_MAX:
        raise ValueError("kek_version out of range")
    return _frame(_DEK_AAD_LABEL, dek_id) + struct.pack(">Q", kek_version)


def blind_index(index_key: bytes, domain: str, value: str) -> str:
    """HMAC-SHA256 of ``value`` in ``domain`` as 64 lowercase hex characters."""
    if len(index_key) != KEY_BYTES:
        raise ValueError(f"index key must be {KEY_BYTES} bytes")
    if not domain:
        raise ValueError("blind index domain must not be empty")
    return hmac.new(
        index_key, _frame(_BLIND_INDEX_LABEL, domain, value), hashlib.sha256
    ).hexdigest()


def derive_subkey(master: bytes, label: str) -> bytes:
    """Derive an independent 256-bit key for ``label`` from ``master`` with HKDF-SHA256."""
    if len(master) != KEY_BYTES:
        raise ValueError(f"master key must be {KEY_BYTES} bytes")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=_frame(_SUBKEY_LABEL, label),
    )
    return hkdf.derive(master)


def key_check_mac(key: bytes, *fields: str) -> bytes:
    """A key check value: HMAC-SHA256 of ``fields`` under a subkey of ``key``.

    Proves which key a party holds without revealing it, and is useless for anything
    else: the subkey is derived for this purpose only.
    """
    subkey = derive_subkey(key, "key-check/v1")
    return hmac.new(subkey, _frame(_KEY_CHECK_LABEL, *fields), hashlib.sha256).digest()
