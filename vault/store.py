"""The vault: seals records under per-customer (or per-record) data keys and stores them.

Envelope encryption: a record is sealed with AES-256-GCM under a data key (DEK); the
DEK is stored wrapped by the key ring's active key-encryption key (KEK). Associated
data binds each ciphertext to its token, kind and DEK, so a ciphertext copied to
another row or another customer's key fails authentication instead of decrypting.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

from vault.audit import AuditLog
from vault.backends.base import Backend, DekRow, Link, RecordRow
from vault.backends.sqlite import SqliteBackend
from vault.crypto import Sealer, blind_index, dek_aad, derive_subkey, new_key, record_aad
from vault.errors import (
    DecryptionFailed,
    DuplicateRecord,
    RecordNotFound,
    UnknownKeyVersion,
    VaultError,
    VaultUrlError,
)
from vault.keys.check import KeyCheckMixin
from vault.keys.ring import RELOAD_CHECK_SECONDS, KekProvider
from vault.lifecycle import VaultLifecycle
from vault.records import Kind, NewRecord, Record, iso, new_token, token_kind, utcnow
from vault.retention import RetentionPolicy
from vault.urls import (
    POSTGRES_PREFIXES,
    SQLITE_PREFIX,
    sqlite_path,
)

# Fixed text: the URL (which may carry a password) and the import error stay out of it.
POSTGRES_EXTRA_MISSING: Final = (
    "a postgresql:// vault URL needs the postgres extra: pip install 'tokenproxy[postgres]'"
)
_log = logging.getLogger("vault.store")
_DEK_CACHE_SIZE = 4096
_INSERT_ATTEMPTS = 3


def open_backend(
    url: str, *, pool_min: int = 1, pool_max: int = 10, db_timeout: float = 5.0
) -> Backend:
    """Build the backend a vault URL names: ``sqlite:///path`` or ``postgresql://…``.

    SQLite paths follow :mod:`vault.urls` (three slashes relative, four absolute).
    ``pool_min``/``pool_max`` size PostgreSQL's connection pool; ``db_timeout`` bounds its
    connects and statements (seconds). SQLite ignores them.
    """
    if url.startswith(SQLITE_PREFIX):
        return SqliteBackend(str(sqlite_path(url)))
    if url.startswith(POSTGRES_PREFIXES):
        # asyncpg is the optional `postgres` extra: imported only when a URL names it.
        try:
            from vault.backends.postgres import PostgresBackend
        except ImportError as exc:
            if not (exc.name or "").startswith("asyncpg"):
                raise
            raise VaultUrlError(POSTGRES_EXTRA_MISSING) from None

        return PostgresBackend(
            url,
            pool_min=pool_min,
            pool_max=pool_max,
            command_timeout=db_timeout,
            connect_timeout=db_timeout,
        )
    raise VaultUrlError(
        "the vault URL must be sqlite:///relative/path, sqlite:////absolute/path or postgresql://..."
    )


class Vault(VaultLifecycle, KeyCheckMixin):
    """Encrypted token store over a backend and a key-encryption-key provider."""

    def __init__(
        self,
        backend: Backend,
        keys: KekProvider,
        *,
        retention: RetentionPolicy | None = None,
        touch_granularity: timedelta = timedelta(hours=1),
    ) -> None:
        self.backend = backend
        self.keys = keys
        self.retention = retention or RetentionPolicy()
        # Last-use marks waiting for flush_usage (token -> ISO time): see VaultLifecycle.
        self.touch_granularity = touch_granularity
        self._used: dict[str, str] = {}
        self._index_key = keys.index_key
        self._notes: Sealer | None = None
        # The audit trail (vault.audit): append / verify / export; erasure and delete
        # routes call `vault.audit.append(...)` before answering.
        self.audit = AuditLog(backend, keys.index_key)
        # Unwrapped DEKs, as ready AEAD objects: unwrapping per read would double the crypto cost.
        # A rewrap never makes an entry stale: it re-encrypts the *same* DEK under another KEK
        # version, and records stay sealed under that DEK, so the cached key still opens them.
        # Only erasure changes what a dek_id may decrypt, and it calls `forget_dek`.
        self._deks: OrderedDict[str, Sealer] = OrderedDict()
        self._keys_generation = keys.generation
        self._keys_checked_at = time.monotonic()
        self._keys_looking: asyncio.Task[bool] | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        keys: KekProvider,
        *,
        migrate: bool = True,
        check_keys: bool = True,
        pool_min: int = 1,
        pool_max: int = 10,
        db_timeout: float = 5.0,
        migrate_timeout: float | None = None,
        retention: RetentionPolicy | None = None,
        source: str = "key ring",
    ) -> Vault:
        """Open the backend ``url`` names, run migrations and check the key ring.

        ``migrate=False`` skips migrations (``migrate_timeout`` bounds each of their
        statements; default ``db_timeout``); ``check_keys=False`` skips the key ring check
        (``check_key_ring``, which raises KeyRingMismatch naming ``source``) for a caller
        that runs it itself after migrating.
        """
        backend = open_backend(url, pool_min=pool_min, pool_max=pool_max, db_timeout=db_timeout)
        vault = cls(backend, keys, retention=retention)
        try:
            if migrate:
                await backend.migrate(statement_timeout=migrate_timeout)
            if check_keys:
                await vault.check_key_ring(source=source)
        except BaseException:
            await backend.close()
            raise
        return vault

    def index(self, domain: str, value: str) -> str:
        """Keyed blind index of ``value`` (customer refs, partner fingerprints)."""
        return blind_index(self._index_key, domain, value)

    def seal_note(self, purpose: str, payload: bytes) -> str:
        """Seal a short-lived note the caller holds for us (URL-safe text).

        For state a client must bring back (a card setup awaiting authentication)
        without the vault keeping a row for it. ``purpose`` is bound as associated
        data, so a note made for one purpose or holder opens for no other.
        """
        blob = self._note_sealer().seal(payload, b"note\x00" + purpose.encode())
        return base64.urlsafe_b64encode(blob).decode().rstrip("=")

    def open_note(self, purpose: str, note: str) -> bytes:
        """Open a note made by :meth:`seal_note` for ``purpose``; DecryptionFailed otherwise."""
        try:
            blob = base64.urlsafe_b64decode(note + "=" * (-len(note) % 4))
        except (binascii.Error, ValueError):
            raise DecryptionFailed("the note could not be opened") from None
        return self._note_sealer().open(blob, b"note\x00" + purpose.encode())

    def _note_sealer(self) -> Sealer:
        if self._notes is None:
            self._notes = Sealer(derive_subkey(self._index_key, "notes/v1"))
        return self._notes

    def fingerprint_index(self, kind: Kind, fingerprint: str) -> str:
        """The keyed blind index a record of ``kind`` keeps of a partner fingerprint."""
        return self.index(f"fingerprint:{kind}", fingerprint)

    # -- data keys ------------------------------------------------------------

    async def refresh_keys(self, *, force: bool = False) -> bool:
        """Follow a rotation made by another process (the provider re-reads its source).

        Unless ``force``, at most every RELOAD_CHECK_SECONDS. The provider may block (a
        KMS provider unlocks a new version's key at KMS), so it runs in a thread.
        """
        now = time.monotonic()
        if not force and now - self._keys_checked_at < RELOAD_CHECK_SECONDS:
            return False
        self._keys_checked_at = now
        return await asyncio.to_thread(self.keys.refresh, force=True)

    def _follow_rotation(self) -> None:
        """Start a look at the key source when one is due, without waiting for it.

        A KMS provider unlocks a new version at KMS, which may take its timeouts when KMS
        is down: a tokenize must not wait for that. Until the look succeeds, new data keys
        stay on the version in force, which still works.
        """
        now = time.monotonic()
        if self._keys_looking is not None or now - self._keys_checked_at < RELOAD_CHECK_SECONDS:
            return
        self._keys_checked_at = now
        self._keys_looking = asyncio.create_task(asyncio.to_thread(self.keys.refresh, force=True))
        self._keys_looking.add_done_callback(self._looked)

    def _looked(self, task: asyncio.Task[bool]) -> None:
        self._keys_looking = None
        if not task.cancelled() and task.exception() is not None:
            _log.warning("looking for a key rotation failed: %s", type(task.exception()).__name__)

    async def renew_keys(self) -> None:
        """Re-confirm the key material with its key service (a thread; see KekProvider.renew)."""
        await asyncio.to_thread(self.keys.renew)
        self._check_generation()

    def _check_generation(self) -> None:
        if self.keys.generation != self._keys_generation:
            # A key was withdrawn: data keys unwrapped under it must stop opening records.
            self._keys_generation = self.keys.generation
            self._deks.clear()

    async def _new_dek(self, customer_idx: str | None) -> tuple[DekRow, Sealer]:
        dek_id = "dek_" + secrets.token_urlsafe(16)
        key = new_key()
        # Follow a rotation made by another process, so new data keys stop landing on a
        # version that `keys rewrap` is draining (within seconds; never waited for here).
        self._follow_rotation()
        version = self.keys.active_version
        aad = dek_aad(dek_id, version)
        if self.keys.is_local(version):
            wrapped_version, wrapped = self.keys.wrap(key, aad)
        else:
            wrapped_version, wrapped = await asyncio.to_thread(self.keys.wrap, key, aad)
        if wrapped_version != version:
            # A refresh in another thread moved the active version between the two reads:
            # the associated data names the old one, so this wrap is unusable. Rare; retry.
            return await self._new_dek(customer_idx)
        row = DekRow(dek_id, customer_idx, version, wrapped, iso(utcnow()))
        return row, Sealer(key)

    def _remember(self, dek_id: str, sealer: Sealer) -> None:
        self._deks[dek_id] = sealer
        if len(self._deks) > _DEK_CACHE_SIZE:
            self._deks.popitem(last=False)

    async def _unwrap(self, row: DekRow) -> Sealer:
        try:
            key = await self._unwrap_key(row)
        except UnknownKeyVersion:
            # Another process rotated and wrapped this data key under the new version before
            # our next look at the key source: look now, then try once more.
            if not await self.refresh_keys(force=True):
                raise
            key = await self._unwrap_key(row)
        sealer = Sealer(key)
        self._remember(row.dek_id, sealer)
        return sealer

    async def _unwrap_key(self, row: DekRow) -> bytes:
        aad = dek_aad(row.dek_id, row.kek_version)
        if self.keys.is_local(row.kek_version):
            return self.keys.unwrap(row.kek_version, row.wrapped, aad)
        return await asyncio.to_thread(self.keys.unwrap, row.kek_version, row.wrapped, aad)

    def _cached_dek(self, dek_id: str) -> Sealer | None:
        self._check_generation()
        return self._deks.get(dek_id)

    async def _dek_by_id(self, dek_id: str) -> Sealer:
        sealer = self._cached_dek(dek_id)
        if sealer is not None:
            self._deks.move_to_end(dek_id)  # least recently used goes first, not oldest
            return sealer
        row = await self.backend.get_dek(dek_id)
        if row is None:
            # The record names a key that is gone: erased customer, or a tampered row.
            raise DecryptionFailed("ciphertext failed authentication")
        return await self._unwrap(row)

    def forget_dek(self, dek_id: str) -> None:
        """Drop a cached data key (after erasure; a rewrap leaves the key itself unchanged)."""
        self._deks.pop(dek_id, None)

    # -- records --------------------------------------------------------------

    async def put(
        self,
        new: NewRecord,
        *,
        token: str | None = None,
        link: Callable[[Record], Link | None] | None = None,
        settle_outbox: str | None = None,
    ) -> Record:
        """Seal and store a new record; returns once it is durable.

        ``token`` (from :func:`new_token`) lets a caller choose the token up front, so
        a write retried after a crash is recognisable (idempotent requests use it).
        ``link`` gives the record's partner blind indexes and ``settle_outbox`` the outbox
        row it settles, both written in the record's own transaction
        (:func:`vault.partner_sync.put_linked`).
        """
        if token is not None and token_kind(token) != new.kind:
            raise VaultError("token does not match the record kind")
        customer_idx = self.index("customer", new.customer_ref) if new.customer_ref else None
        fingerprint_idx = new.fingerprint_idx or (
            self.fingerprint_index(new.kind, new.fingerprint) if new.fingerprint else None
        )
        for _ in range(_INSERT_ATTEMPTS):
            dek_row: DekRow | None = None
            existing = await self.backend.get_customer_dek(customer_idx) if customer_idx else None
            if existing is not None:
                dek_id = existing.dek_id
                sealer = self._cached_dek(dek_id) or await self._unwrap(existing)
            else:
                dek_row, sealer = await self._new_dek(customer_idx)
                dek_id = dek_row.dek_id
            record = Record(
                token=token or new_token(new.kind),
                kind=new.kind,
                partner=new.partner,
                partner_reference=new.partner_reference,
                details=dict(new.details),
                customer_ref=new.customer_ref,
                metadata=dict(new.metadata),
                created_at=utcnow(),
            )
            plaintext = json.dumps(record.payload(), separators=(",", ":")).encode()
            row = RecordRow(
                token=record.token,
                kind=str(record.kind),
                dek_id=dek_id,
                ciphertext=sealer.seal(plaintext, record_aad(record.token, record.kind, dek_id)),
                customer_idx=customer_idx,
                fingerprint_idx=fingerprint_idx,
                created_at=iso(record.created_at),
            )
            try:
                await self.backend.insert(
                    row,
                    dek_row,
                    link=link(record) if link is not None else None,
                    settle_outbox=settle_outbox,
                )
            except DuplicateRecord:
                # Another request created this customer's key first: seal again under it.
                continue
            if dek_row is not None:
                self._remember(dek_id, sealer)
            return record
        raise VaultError("could not store record after repeated key conflicts")

    async def get(self, token: str, *, include_expired: bool = False) -> Record:
        """Decrypt and return the record for ``token``; RecordNotFound or DecryptionFailed.

        A record past its retention period is RecordNotFound even before the sweeper
        deletes it, unless ``include_expired`` (deletion and access reports need it).
        """
        kind = token_kind(token)
        if kind is None:
            raise RecordNotFound("no such token")
        dek: DekRow | None = None
        if self.backend.inline_reads:
            row = await self.backend.get_record(token)
        else:
            # One round trip instead of two when the record's data key is not cached.
            found = await self.backend.get_record_and_dek(token)
            row, dek = found if found is not None else (None, None)
        if row is None:
            raise RecordNotFound("no such token")
        record = await self._open_row(row, dek)
        if not include_expired and self.is_expired(record):
            raise RecordNotFound("no such token")
        return record

    async def _open_row(self, row: RecordRow, dek: DekRow | None = None) -> Record:
        """Decrypt a row: its kind column must match the kind its token names.

        ``dek``: the row's wrapped data key when it was read along (used on a cache miss).
        """
        kind = token_kind(row.token)
        if kind is None or row.kind != kind:
            raise DecryptionFailed("ciphertext failed authentication")
        if dek is None or dek.dek_id != row.dek_id:
            sealer = await self._dek_by_id(row.dek_id)
        elif (cached := self._cached_dek(row.dek_id)) is not None:
            self._deks.move_to_end(row.dek_id)
            sealer = cached
        else:
            sealer = await self._unwrap(dek)
        plaintext = sealer.open(row.ciphertext, record_aad(row.token, kind, row.dek_id))
        return _record_from(row, kind, plaintext)

    async def delete(self, token: str) -> bool:
        """Delete one record; True when it existed."""
        if token_kind(token) is None:
            return False
        return await self.backend.delete_record(token)

    @property
    def healthy(self) -> bool:
        """False after the backend last failed to reach its database; ``ping`` re-checks."""
        return self.backend.healthy

    async def ping(self) -> None:
        """Raise StorageUnavailable unless the backend answers."""
        await self.backend.ping()

    async def close(self) -> None:
        """Flush pending writes (last-use marks included) and close the backend."""
        if self._keys_looking is not None:
            # Bounded by the key service's timeouts; its thread would outlive a cancel.
            with contextlib.suppress(Exception):
                await self._keys_looking
        try:
            await self.flush_usage()
        finally:
            await self.backend.close()


def _record_from(row: RecordRow, kind: Kind, plaintext: bytes) -> Record:
    try:
        payload: dict[str, Any] = json.loads(plaintext)
    except ValueError:  # pragma: no cover - authenticated plaintext is always our JSON
        raise DecryptionFailed("ciphertext failed authentication") from None
    return Record(
        token=row.token,
        kind=kind,
        partner=payload["partner"],
        partner_reference=payload["partner_reference"],
        details=payload["details"],
        customer_ref=payload["customer_ref"],
        metadata=payload["metadata"],
        created_at=datetime.fromisoformat(row.created_at),
        last_used_at=datetime.fromisoformat(row.last_used_at) if row.last_used_at else None,
    )
