"""The vault's error tree. Nothing here carries key bytes, plaintext or library text.

::

    VaultError
    ├── RecordNotFound        no such token (or expired, or erased)
    ├── DecryptionFailed      a ciphertext or wrapped key failed authentication
    ├── KeyRingError          key ring missing, unreadable, badly permissioned or corrupt
    │   ├── KeyInUse          a key version still wraps data keys and cannot be retired
    │   ├── KeyRingMismatch   the key ring is not the one the vault recorded (wrong ring)
    │   │   └── KeyRingBehind only newer versions are missing: a rotation not yet delivered
    │   └── UnknownKeyVersion a data key names a version this key ring does not hold
    ├── AuditUnavailable      an audit event could not be written (the audited action is refused)
    ├── DuplicateRecord       a token or idempotency key already exists
    ├── StorageUnavailable    the database cannot be reached or answered with an error
    └── VaultUrlError         a vault URL this code cannot open (the message names the form)
"""

from __future__ import annotations


class VaultError(Exception):
    """Base of all vault errors."""


class RecordNotFound(VaultError):
    """The token does not exist, has expired, or was erased."""


class DecryptionFailed(VaultError):
    """Authentication of a ciphertext or wrapped key failed; never returns data."""


class KeyRingError(VaultError):
    """The key ring cannot be used; the message names the file and problem, never key bytes."""


class KeyInUse(KeyRingError):
    """A key version still wraps data keys."""


class KeyRingMismatch(KeyRingError):
    """The key ring does not match the check values the vault recorded: another vault's ring."""


class KeyRingBehind(KeyRingMismatch):
    """The vault recorded versions newer than any this ring holds, and nothing else differs.

    A rotation made elsewhere (a Job) whose key file has not reached this process yet: on
    Kubernetes, until kubelet updates the Secret volume, about a minute.
    """


class UnknownKeyVersion(KeyRingError):
    """A wrapped key names a version the loaded key ring does not know (maybe rotated since)."""


class AuditUnavailable(VaultError):
    """An audit event could not be written; the action it records must not proceed."""


class DuplicateRecord(VaultError):
    """A row with this primary key already exists."""


class StorageUnavailable(VaultError):
    """The storage backend failed; the operation may be retried later."""


class VaultUrlError(VaultError):
    """A vault URL this code cannot open; the message names the expected form, not the URL."""
