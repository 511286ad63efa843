"""Encrypted token vault: records sealed under envelope keys, in SQLite or PostgreSQL.

Usable without the proxy. The public API is what this module exports.
"""

from vault.errors import (
    DecryptionFailed,
    DuplicateRecord,
    KeyInUse,
    KeyRingError,
    RecordNotFound,
    StorageUnavailable,
    VaultError,
)
from vault.idempotency import (
    Claim,
    IdempotencyBusy,
    IdempotencyMismatch,
    IdempotencyOwnershipLost,
    IdempotencyStore,
    Owner,
    Replay,
)
from vault.keyring import KekProvider, KeyRing, LocalKekProvider
from vault.records import Kind, NewRecord, Record, iso, new_token, token_kind, utcnow
from vault.store import Vault, open_backend

__all__ = [
    "Claim",
    "DecryptionFailed",
    "DuplicateRecord",
    "IdempotencyBusy",
    "IdempotencyMismatch",
    "IdempotencyOwnershipLost",
    "IdempotencyStore",
    "KekProvider",
    "KeyInUse",
    "KeyRing",
    "KeyRingError",
    "Kind",
    "LocalKekProvider",
    "NewRecord",
    "Owner",
    "Record",
    "RecordNotFound",
    "Replay",
    "StorageUnavailable",
    "Vault",
    "VaultError",
    "iso",
    "new_token",
    "open_backend",
    "token_kind",
    "utcnow",
]
