"""PostgreSQL backend (asyncpg): one database shared by several proxy replicas.

Why this shape:

* Every request-path operation is one statement on one pooled connection: one round
  trip, one implicit transaction. Inserting a record with its new data key is a single
  ``WITH … INSERT`` so the pair is atomic without BEGIN/COMMIT round trips.
* A token handed back must be durable: a PostgreSQL commit returns after its WAL is
  flushed while ``synchronous_commit`` is on, and concurrent commits share one flush
  (the server groups them). Sessions are opened with ``synchronous_commit=on`` unless
  the URL asks for a stronger level (``remote_write``/``remote_apply``) or ``local``.
* Outages must fail fast and be visible before the proxy spends a partner call:
  ``healthy`` drops on any connection error and whenever a pooled connection dies,
  and comes back with the next statement that succeeds (a ``ping`` included).
* Library exceptions never leave this module: unique and foreign-key violations
  become DuplicateRecord (as SQLite's IntegrityError does), everything else
  StorageUnavailable with our own message.
"""

from __future__ import annotations

import asyncio
import functools
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from vault.backends.base import (
    AUDIT_GENESIS,
    DEK_COLUMNS,
    SCHEMA_OUTDATED,
    AuditEntry,
    AuditLinker,
    AuditRow,
    DekRewrap,
    DekRow,
    IdempotencyKeyWrap,
    Link,
    RecordRow,
    record_and_dek,
)
from vault.backends.postgres_idempotency import PostgresIdempotencyMixin
from vault.backends.postgres_lifecycle import PostgresLifecycleMixin
from vault.backends.postgres_limits import PostgresLimitsMixin
from vault.backends.postgres_sync import PostgresSyncMixin
from vault.backends.sql import POSTGRES as SQL
from vault.backends.sql import numbered
from vault.errors import DuplicateRecord, StorageUnavailable
from vault.migrations import Statement, drive_async, runner

if TYPE_CHECKING:
    from vault.backends.base import Backend

T = TypeVar("T")

_DURABLE_LEVELS = frozenset({"on", "local", "remote_write", "remote_apply"})


@functools.cache
def _insert_sql(*, linked: bool, dek: bool, settle: bool) -> str:
    """The one statement of ``insert``: the record, then in order of their arguments its
    blind indexes, its new data key and the outbox row to delete (data-modifying CTEs
    commit or fail with the record's insert).

    The foreign key from the record to its data key is checked at the end of the
    statement, after both rows exist.
    """
    record = SQL.insert_linked_record if linked else SQL.insert_record
    position = 10 if linked else 8
    ctes = []
    if dek:
        marks = ", ".join(f"${position + i}" for i in range(1, 6))
        ctes.append(f"dek AS (INSERT INTO deks ({DEK_COLUMNS}) VALUES ({marks}))")  # noqa: S608
        position += 5
    if settle:
        ctes.append(f"settled AS (DELETE FROM partner_outbox WHERE partner_key = ${position + 1})")  # noqa: S608
    return (f"WITH {', '.join(ctes)} " if ctes else "") + record


# The per-record data key goes with its record; a customer's key stays (other records,
# later records) until the customer is erased. The sub-select sees the table as it was
# before this statement, hence ``token <> $1``.
_DELETE_RECORD = (
    "WITH gone AS (DELETE FROM records WHERE token = $1 RETURNING dek_id),"
    " dek AS (DELETE FROM deks WHERE dek_id IN (SELECT dek_id FROM gone)"
    " AND customer_idx IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM records r WHERE r.dek_id = deks.dek_id AND r.token <> $1))"
    " SELECT count(*) FROM gone"
)
# Migrations of one schema are serialised across processes; other schemas (other
# tenants, parallel test runs) in the same database do not wait for each other.
_MIGRATION_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtext('tokenproxy.migrate.' || current_schema()))"
)

# Every appender, in every process, takes this lock before reading the chain head, so
# each event links to the one committed just before it.
_AUDIT_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tokenproxy.audit.' || current_schema()))"
# One statement: every compare-and-set of the batch commits together.
_REWRAP = (
    "UPDATE deks d SET kek_version = c.new_version, wrapped = c.new_wrapped"
    " FROM unnest($1::text[], $2::int[], $3::bytea[], $4::int[], $5::bytea[])"
    " AS c(dek_id, old_version, old_wrapped, new_version, new_wrapped)"
    " WHERE d.dek_id = c.dek_id AND d.kek_version = c.old_version"
    " AND d.wrapped = c.old_wrapped"
)
_REWRAP_IDEMPOTENCY = (
    "UPDATE idempotency_keys k SET kek_version = c.new_version, wrapped_dek = c.new_wrapped"
    " FROM unnest($1::text[], $2::int[], $3::bytea[], $4::int[], $5::bytea[])"
    " AS c(key_idx, old_version, old_wrapped, new_version, new_wrapped)"
    " WHERE k.key_idx = c.key_idx AND k.kek_version = c.old_version"
    " AND k.wrapped_dek = c.old_wrapped"
)

# What a broken or unreachable database raises through asyncpg: server errors, protocol
# and connection-state errors, socket errors (refused, reset) and timeouts.
_STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


def session_settings(url: str) -> dict[str, str]:
    """Server settings for our sessions: ``synchronous_commit`` never weaker than local flush."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    wanted = query.get("synchronous_commit", ["on"])[-1]
    return {"synchronous_commit": wanted if wanted in _DURABLE_LEVELS else "on"}


class PostgresBackend(
    PostgresLifecycleMixin, PostgresIdempotencyMixin, PostgresSyncMixin, PostgresLimitsMixin
):
    """The backend for several replicas on one PostgreSQL database."""

    name = "postgres"
    inline_reads = False

    def __init__(
        self,
        url: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        command_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if pool_max < 1 or pool_min > pool_max:
            raise ValueError("pool sizes must satisfy 0 <= pool_min <= pool_max, pool_max >= 1")
        self._url = url
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False
        self._audit_pending: list[tuple[AuditEntry, AuditLinker, asyncio.Future[AuditRow]]] = []
        self._audit_flusher: asyncio.Task[None] | None = None
        self.healthy = True

    # -- connections ----------------------------------------------------------

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._closed:
                raise StorageUnavailable("vault is closed")
            if self._pool is None:
                pool = asyncpg.create_pool(
                    self._url,
                    min_size=self._pool_min,
                    max_size=self._pool_max,
                    timeout=self._connect_timeout,
                    command_timeout=self._command_timeout,
                    server_settings=session_settings(self._url),
                    init=self._init_connection,
                )
                try:
                    await pool
                except BaseException:
                    # The pool is retried on the next call: a database that is down at
                    # start-up must not leave the vault permanently broken.
                    pool.terminate()
                    raise
                self._pool = pool
        return self._pool

    def pool_usage(self) -> tuple[int, int] | None:
        """(connections borrowed, the pool's maximum); None before the pool exists.

        The maximum, not the connections open: saturation is borrowed over what the pool
        may ever hold (an idle pool shrinks to its minimum, and 1 of 1 open is not full).
        """
        pool = self._pool
        if pool is None:
            return None
        return pool.get_size() - pool.get_idle_size(), pool.get_max_size()

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        conn.add_termination_listener(self._on_connection_lost)

    def _on_connection_lost(self, conn: asyncpg.Connection) -> None:
        # A pooled connection died (server gone, proxy cut, idle expiry): the next
        # tokenization re-checks the database before it calls the partner.
        if not self._closed:
            self.healthy = False

    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._closed:
            raise StorageUnavailable("vault is closed")
        try:
            pool = await self._get_pool()
            async with pool.acquire(timeout=self._command_timeout) as conn:
                result = await op(conn)
        except asyncpg.IntegrityConstraintViolationError:
            # Unique or foreign-key conflict, as SQLite's IntegrityError: the caller reloads
            # and retries. The server's detail text names key values (tokens): dropped.
            self.healthy = True
            raise DuplicateRecord("row conflicts with a stored row") from None
        except _STORAGE_ERRORS as exc:
            self.healthy = False
            raise StorageUnavailable(f"PostgreSQL unavailable ({type(exc).__name__})") from None
        self.healthy = True
        return result

    # -- schema ---------------------------------------------------------------

    async def migrate(self, *, statement_timeout: float | None = None) -> int:
        """Apply pending migrations (:mod:`vault.migrations`) in one transaction under an
        advisory lock per schema; safe from several processes.

        Each statement, and the wait for the lock, is bounded by ``statement_timeout`` (default: the
        request timeout, TOKENPROXY_DB_TIMEOUT), client-side and as the server's
        ``statement_timeout``, so a long migration is not rolled back at every attempt."""
        limit = self._command_timeout if statement_timeout is None else statement_timeout

        async def run(conn: asyncpg.Connection) -> int:
            async def execute(step: Statement) -> list[Any]:
                if step.script:
                    # No arguments: the simple query protocol runs every statement in it.
                    await conn.execute(step.sql, timeout=limit)
                    return []
                rows: list[Any] = await conn.fetch(numbered(step.sql), *step.args, timeout=limit)
                return rows

            async with conn.transaction():
                # SET LOCAL: ends with this transaction, the pooled session keeps its own.
                await conn.execute(f"SET LOCAL statement_timeout = {int(limit * 1000)}")
                await conn.execute(_MIGRATION_LOCK, timeout=limit)
                return await drive_async(runner("postgres"), execute)

        return await self._run(run)

    # -- writes ---------------------------------------------------------------

    async def insert(
        self,
        record: RecordRow,
        dek: DekRow | None,
        *,
        link: Link | None = None,
        settle_outbox: str | None = None,
    ) -> None:
        """Insert a record and, when given, its new data key, its blind indexes and the
        deletion of its outbox row, in one statement."""
        args: list[Any] = list(record.values())
        if link is not None:
            args += [link.reference_idx, link.partner_customer_idx]
        if dek is not None:
            args += dek.values()
        if settle_outbox is not None:
            args.append(settle_outbox)
        sql = _insert_sql(
            linked=link is not None, dek=dek is not None, settle=settle_outbox is not None
        )

        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute(sql, *args)

        await self._run(run)

    async def delete_record(self, token: str) -> bool:
        """Delete a record and its data key when no other record shares it."""

        async def run(conn: asyncpg.Connection) -> bool:
            deleted: int = await conn.fetchval(_DELETE_RECORD, token)
            return deleted > 0

        return await self._run(run)

    async def rewrap_deks(self, changes: Sequence[DekRewrap]) -> int:
        """Compare-and-set each data key's (version, wrapped) pair, all in one statement."""
        return await self._rewrap(_REWRAP, changes)

    async def rewrap_idempotency_keys(self, changes: Sequence[DekRewrap]) -> int:
        """Compare-and-set each idempotency row's (version, wrapped key), in one statement."""
        return await self._rewrap(_REWRAP_IDEMPOTENCY, changes)

    async def _rewrap(self, sql: str, changes: Sequence[DekRewrap]) -> int:
        if not changes:
            return 0

        async def run(conn: asyncpg.Connection) -> int:
            status: str = await conn.execute(
                sql,
                [c.dek_id for c in changes],
                [c.old_version for c in changes],
                [c.old_wrapped for c in changes],
                [c.new_version for c in changes],
                [c.new_wrapped for c in changes],
            )
            return int(status.rsplit(" ", 1)[-1])

        return await self._run(run)

    async def append_audit(self, entry: AuditEntry, link: AuditLinker) -> AuditRow:
        """Chain and insert one event under the schema's audit advisory lock.

        Appends from one process are grouped: while a batch holds the lock and commits,
        new events queue and the next transaction takes all of them. The chain is one
        sequence across every replica, so each lock hold costs a durable commit; one
        per event capped all replicas together near a thousand resolves a second.
        """
        if self._closed:
            raise StorageUnavailable("vault is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AuditRow] = loop.create_future()
        self._audit_pending.append((entry, link, fut))
        if self._audit_flusher is None:
            self._audit_flusher = loop.create_task(self._flush_audit())
        return await fut

    async def _flush_audit(self) -> None:
        try:
            while self._audit_pending:
                batch, self._audit_pending = self._audit_pending, []
                try:
                    rows = await self._run(functools.partial(self._append_batch, batch=batch))
                except Exception as exc:  # noqa: BLE001 - each waiter gets the batch's failure
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, _, fut), row in zip(batch, rows, strict=True):
                    if not fut.done():
                        fut.set_result(row)
        finally:
            self._audit_flusher = None

    @staticmethod
    async def _append_batch(
        conn: asyncpg.Connection,
        batch: list[tuple[AuditEntry, AuditLinker, asyncio.Future[AuditRow]]],
    ) -> list[AuditRow]:
        async with conn.transaction():
            await conn.execute(_AUDIT_LOCK)
            head = await conn.fetchrow(SQL.audit_head)
            seq, prev_hash = (head[0] + 1, head[1]) if head else (1, AUDIT_GENESIS)
            rows = []
            for entry, link, _ in batch:
                row = AuditRow(seq, entry, prev_hash, link(prev_hash, entry))
                rows.append(row)
                seq, prev_hash = seq + 1, row.hash
            await conn.executemany(
                SQL.insert_audit,
                [
                    (
                        row.seq,
                        row.entry.occurred_at,
                        row.entry.event_type,
                        row.entry.outcome,
                        row.entry.actor,
                        row.entry.origin,
                        row.entry.resource,
                        row.entry.detail,
                        row.prev_hash,
                        row.hash,
                    )
                    for row in rows
                ],
            )
            return rows

    # -- reads ----------------------------------------------------------------

    async def _fetch(self, sql: str, *args: object) -> list[Any]:
        async def run(conn: asyncpg.Connection) -> list[Any]:
            rows: list[Any] = await conn.fetch(sql, *args)
            return rows

        return await self._run(run)

    async def count_deks_by_version(self) -> dict[int, int]:
        """Data keys per KEK version (walks the kek_version index)."""
        rows = await self._fetch(SQL.count_deks_by_version)
        return {int(version): int(count) for version, count in rows}

    async def count_idempotency_by_version(self, now: str) -> dict[int, int]:
        """Live idempotency rows per KEK version (their stored answers need that key)."""
        rows = await self._fetch(SQL.count_idempotency_by_version, now)
        return {int(version): int(count) for version, count in rows}

    async def deks_not_on_version(
        self, version: int, *, after: str | None, limit: int
    ) -> list[DekRow]:
        """A page of data keys not on ``version``, in dek_id order (keyset pagination)."""
        rows = await self._fetch(SQL.deks_not_on_version, version, after or "", limit)
        return [DekRow(*row) for row in rows]

    async def idempotency_keys_not_on_version(
        self, version: int, *, now: str, after: str | None, limit: int
    ) -> list[IdempotencyKeyWrap]:
        """A page of live idempotency rows' keys not on ``version``, in key_idx order."""
        rows = await self._fetch(
            SQL.idempotency_keys_not_on_version, version, now, after or "", limit
        )
        return [IdempotencyKeyWrap(*row) for row in rows]

    async def read_audit(
        self, *, after_seq: int = 0, limit: int = 1000, since: str | None = None
    ) -> list[AuditRow]:
        """A page of audit events in chain order."""
        rows = await self._fetch(SQL.read_audit, after_seq, since or "", limit)
        return [
            AuditRow(r[0], AuditEntry(r[1], r[2], r[3], r[4], r[5], r[6], r[7]), r[8], r[9])
            for r in rows
        ]

    async def audit_prune_point(self, before: str) -> AuditRow | None:
        """The newest event that, with every event before it, is older than ``before``."""
        young = await self._fetchrow(
            "SELECT seq FROM audit_events WHERE occurred_at >= $1 ORDER BY seq LIMIT 1", before
        )
        r = await self._fetchrow(SQL.audit_before, young[0] if young else 2**63 - 1)
        if r is None:
            return None
        return AuditRow(r[0], AuditEntry(r[1], r[2], r[3], r[4], r[5], r[6], r[7]), r[8], r[9])

    async def prune_audit(self, through_seq: int, *, batch: int = 5000) -> int:
        """Delete events with seq <= ``through_seq``, oldest first, one batch per transaction."""

        async def run(conn: asyncpg.Connection) -> int:
            status = await conn.execute(SQL.prune_audit, through_seq, batch)
            return int(status.rsplit(" ", 1)[-1])

        total = 0
        while deleted := await self._run(run):
            total += deleted
        return total

    async def _fetchrow(self, sql: str, *args: object) -> Any:
        async def run(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(sql, *args)

        return await self._run(run)

    async def get_record(self, token: str) -> RecordRow | None:
        """Read one record by primary key."""
        row = await self._fetchrow(SQL.get_record, token)
        return RecordRow(*row) if row else None

    async def get_dek(self, dek_id: str) -> DekRow | None:
        """Read one wrapped data key by id."""
        row = await self._fetchrow(SQL.get_dek, dek_id)
        return DekRow(*row) if row else None

    async def get_record_and_dek(self, token: str) -> tuple[RecordRow, DekRow | None] | None:
        """Read one record and its wrapped data key: one round trip."""
        row = await self._fetchrow(SQL.get_record_and_dek, token)
        return record_and_dek(tuple(row)) if row else None

    async def get_customer_dek(self, customer_idx: str) -> DekRow | None:
        """Read a customer's wrapped data key by the customer's blind index."""
        row = await self._fetchrow(SQL.get_customer_dek, customer_idx)
        return DekRow(*row) if row else None

    async def key_checks(self) -> dict[int, bytes]:
        """Every recorded key ring check value, by version (0: the index key)."""

        async def run(conn: asyncpg.Connection) -> dict[int, bytes] | None:
            try:
                rows = await conn.fetch(SQL.key_checks)
            except asyncpg.UndefinedTableError:
                return None
            return {int(version): bytes(value) for version, value in rows}

        checks = await self._run(run)
        if checks is None:
            raise StorageUnavailable(SCHEMA_OUTDATED)
        return checks

    async def add_key_check(self, version: int, value: bytes, created_at: str) -> bytes:
        """Insert unless present; returns the stored value (a racing inserter's, if it won)."""

        async def run(conn: asyncpg.Connection) -> bytes:
            await conn.execute(SQL.add_key_check, version, value, created_at)
            stored: bytes = await conn.fetchval(SQL.key_check, version)
            return stored

        return await self._run(run)

    async def delete_key_check(self, version: int) -> None:
        """Delete one check value."""

        async def run(conn: asyncpg.Connection) -> None:
            await conn.execute(SQL.delete_key_check, version)

        await self._run(run)

    async def dek_on_version(self, version: int) -> DekRow | None:
        """One data key wrapped by ``version`` (walks the kek_version index)."""
        row = await self._fetchrow(SQL.dek_on_version, version)
        return DekRow(*row) if row else None

    async def dek_version_range(self) -> tuple[int, int] | None:
        """The lowest and highest KEK version wrapping a data key (the kek_version index's ends)."""
        row = await self._fetchrow(SQL.dek_version_range)
        return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

    async def customer_record_sample(self) -> RecordRow | None:
        """One record with a customer (walks the customer index)."""
        row = await self._fetchrow(SQL.customer_record_sample)
        return RecordRow(*row) if row else None

    async def ping(self) -> None:
        """Check the database answers a query (and mark the backend healthy when it does)."""
        await self._fetchrow("SELECT 1")

    async def close(self) -> None:
        """Let borrowed connections finish, then close the pool."""
        if self._closed:
            return
        while self._audit_flusher is not None:
            # Queued audit events are promises made to callers: write them first.
            await asyncio.shield(self._audit_flusher)
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self._command_timeout)
        except _STORAGE_ERRORS:  # TimeoutError included
            pool.terminate()


if TYPE_CHECKING:
    # Checked by mypy: the backend implements every method of the protocol, as declared.
    _: type[Backend] = PostgresBackend
