"""What a storage backend stores, and the interface every backend implements.

Backends see only ciphertext, wrapped keys and blind indexes; encryption happens in
``vault.store`` before a row reaches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One row of ``records``: clear columns plus the sealed payload."""

    token: str
    kind: str
    dek_id: str
    ciphertext: bytes
    customer_idx: str | None
    fingerprint_idx: str | None
    created_at: str
    last_used_at: str | None = None


@dataclass(frozen=True, slots=True)
class DekRow:
    """One wrapped data-encryption key."""

    dek_id: str
    customer_idx: str | None
    kek_version: int
    wrapped: bytes
    created_at: str


class Backend(Protocol):
    """Storage for records and data keys; every method is one short transaction."""

    name: str
    # False once an operation failed to reach the database (or a connection died),
    # True again after one succeeds: lets callers skip irreversible work while down.
    healthy: bool

    async def migrate(self) -> int:
        """Apply pending schema migrations; returns the schema version now in force."""
        ...

    async def insert(self, record: RecordRow, dek: DekRow | None) -> None:
        """Insert a record (and its new data key) atomically and durably.

        Raises DuplicateRecord when the token exists, or when ``dek`` is a customer
        key and that customer already has one (the caller then reloads it).
        """
        ...

    async def get_record(self, token: str) -> RecordRow | None:
        """The record row for ``token``, or None."""
        ...

    async def get_dek(self, dek_id: str) -> DekRow | None:
        """A wrapped data key by id."""
        ...

    async def get_customer_dek(self, customer_idx: str) -> DekRow | None:
        """The data key of a customer (by blind index), or None."""
        ...

    async def delete_record(self, token: str) -> bool:
        """Delete one record (and its data key when no other record uses it)."""
        ...

    async def ping(self) -> None:
        """Raise StorageUnavailable unless the database answers."""
        ...

    async def close(self) -> None:
        """Flush pending writes and release connections."""
        ...
