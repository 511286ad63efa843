"""Encrypted token vault: records sealed under envelope keys, in SQLite or PostgreSQL.

Usable without the proxy. The public API is what this module exports.
"""

from vault.errors import (
    AuditUnavailable,
    DecryptionFailed,
    DuplicateRecord,
    KeyInUse,
    KeyRingBehind,
    KeyRingError,
    KeyRingMismatch,
    RecordNotFound,
    StorageUnavailable,
    UnknownKeyVersion,
    VaultError,
)
from vault.idempotency import (
    Claim,
    IdempotencyBusy,
    IdempotencyErased,
    IdempotencyMismatch,
    IdempotencyOwnershipLost,
    IdempotencyStore,
    Owner,
    Replay,
)
from vault.keys.ring import KekProvider, KeyRing, LocalKekProvider
from vault.lifecycle import MAX_PAGE, Erasure, ErasureStatus, Page, PartnerCustomer, Purge
from vault.records import (
    Kind,
    NewRecord,
    Record,
    iso,
    new_token,
    token_kind,
    utcnow,
)
from vault.retention import RetentionPolicy
from vault.store import Vault, open_backend

__all__ = [
    "MAX_PAGE",
    "AuditUnavailable",
    "Claim",
    "DecryptionFailed",
    "DuplicateRecord",
    "Erasure",
    "ErasureStatus",
    "IdempotencyBusy",
    "IdempotencyErased",
    "IdempotencyMismatch",
    "IdempotencyOwnershipLost",
    "IdempotencyStore",
    "KekProvider",
    "KeyInUse",
    "KeyRing",
    "KeyRingBehind",
    "KeyRingError",
    "KeyRingMismatch",
    "Kind",
    "LocalKekProvider",
    "NewRecord",
    "Owner",
    "Page",
    "PartnerCustomer",
    "Purge",
    "Record",
    "RecordNotFound",
    "Replay",
    "RetentionPolicy",
    "StorageUnavailable",
    "UnknownKeyVersion",
    "Vault",
    "VaultError",
    "iso",
    "new_token",
    "open_backend",
    "token_kind",
    "utcnow",
]
