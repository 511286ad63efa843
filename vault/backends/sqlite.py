"""SQLite backend: one file in WAL mode, reads on the caller's thread, writes group-committed.

Why this shape:

* A primary-key read on a WAL database takes microseconds; a hop to a worker thread
  costs more than the read, so reads run inline on a read-only connection.
* Every token handed back must be durable, so commits use ``synchronous=FULL`` (an
  fsync of the WAL per commit). To keep that cheap, writes queue up while a commit
  is in flight and the next commit takes all of them: one fsync for many tokens.
  Each write runs under its own savepoint so one failing insert cannot undo others.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from vault.backends.base import (
    AUDIT_GENESIS,
    SCHEMA_OUTDATED,
    AuditEntry,
    AuditLinker,
    AuditRow,
    DekRewrap,
    DekRow,
    IdempotencyKeyWrap,
    IdempotencyRow,
    Link,
    RecordRow,
    erased_idempotency_row,
    record_and_dek,
)
from vault.backends.sql import SQLITE as SQL
from vault.backends.sqlite_lifecycle import SqliteLifecycleMixin
from vault.backends.sqlite_sync import SqliteSyncMixin
from vault.backends.sync_sql import OUTBOX_DELETE as _OUTBOX_DELETE
from vault.errors import DuplicateRecord, StorageUnavailable
from vault.migrations import Statement, drive, runner

if TYPE_CHECKING:
    from vault.backends.base import Backend

T = TypeVar("T")
_Op = Callable[[sqlite3.Connection], Any]


def _connect(path: str, *, timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=timeout_ms / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class SqliteBackend(SqliteLifecycleMixin, SqliteSyncMixin):
    """The embedded default backend."""

    name = "sqlite"
    # An embedded file has no outage to remember: every call reaches it directly.
    healthy = True
    # A joined read costs a primary-key read more than the record alone (about half of
    # one), paid on every resolve; the data key's own read is paid only on a cache miss.
    inline_reads = True

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = str(path)
        self._timeout_ms = busy_timeout_ms
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = _connect(self.path, timeout_ms=busy_timeout_ms)
            self._writer.execute("PRAGMA journal_mode = WAL")
            # FULL: the WAL is fsynced at each commit, so a returned token survives power loss.
            self._writer.execute("PRAGMA synchronous = FULL")
            # Erasure and retention must not leave deleted keys and ciphertexts in free pages.
            self._writer.execute("PRAGMA secure_delete = ON")
            # Checkpoints run on their own thread (_Checkpointer), not inside a commit.
            self._writer.execute("PRAGMA wal_autocheckpoint = 0")
            self._reader = _connect(self.path, timeout_ms=busy_timeout_ms)
            self._reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot open SQLite database {self.path}") from exc
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-sqlite")
        self._write_lock = _WriteLock(Path(self.path + ".writelock"), busy_timeout_ms / 1000)
        self._checkpointer = _Checkpointer(self.path, busy_timeout_ms)
        self._pending: list[tuple[_Op, bool, asyncio.Future[Any]]] = []
        # The audit chain's head as of the open write transaction (writer thread only):
        # events appended in one group commit chain on each other without re-reading it.
        self._audit_head: tuple[int, str] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    # -- writes ---------------------------------------------------------------

    async def _write(self, op: Callable[[sqlite3.Connection], T], *, atomic: bool = False) -> T:
        """Queue ``op`` for the next group commit; ``atomic``: at most one statement writes.

        A failing statement undoes only itself in SQLite, so a one-statement op needs no
        savepoint of its own (two statements fewer per op in the writer's transaction).
        """
        if self._closed:
            raise StorageUnavailable("vault is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, atomic, fut))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    outcomes = await loop.run_in_executor(
                        self._executor, self._run_batch, [(op, atomic) for op, atomic, _ in batch]
                    )
                except BaseException:
                    # The executor itself failed (shut down, cancelled): nobody may be left waiting.
                    outcomes = [StorageUnavailable("database write failed")] * len(batch)
                    for (_, _, fut), outcome in zip(batch, outcomes, strict=True):
                        if not fut.done():
                            fut.set_exception(outcome)
                    raise
                for (_, _, fut), outcome in zip(batch, outcomes, strict=True):
                    if fut.done():
                        continue
                    if isinstance(outcome, BaseException):
                        fut.set_exception(outcome)
                    else:
                        fut.set_result(outcome)
        finally:
            self._flusher = None

    def _run_batch(self, ops: list[tuple[_Op, bool]]) -> list[Any]:
        with self._write_lock:
            self._checkpointer.finish(self._writer)
            return self._run_batch_locked(ops)

    def _run_batch_locked(self, ops: list[tuple[_Op, bool]]) -> list[Any]:
        conn = self._writer
        outcomes: list[Any] = []
        # Another process may have appended since our last transaction: read afresh.
        self._audit_head = None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return [StorageUnavailable("database is unavailable")] * len(ops)
        for op, atomic in ops:
            if atomic:
                try:
                    outcomes.append(op(conn))
                except sqlite3.IntegrityError:
                    outcomes.append(DuplicateRecord("row already exists"))
                except Exception as exc:  # noqa: BLE001 - reported to its caller alone
                    outcomes.append(
                        exc
                        if not isinstance(exc, sqlite3.Error)
                        else StorageUnavailable("write failed")
                    )
                continue
            conn.execute("SAVEPOINT op")
            try:
                outcomes.append(op(conn))
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO op")
                outcomes.append(DuplicateRecord("row already exists"))
            except Exception as exc:  # noqa: BLE001 - each op's failure is reported to its caller alone
                conn.execute("ROLLBACK TO op")
                outcomes.append(
                    exc
                    if not isinstance(exc, sqlite3.Error)
                    else StorageUnavailable("write failed")
                )
            conn.execute("RELEASE op")
        try:
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            self._audit_head = None
            return [StorageUnavailable("commit failed")] * len(ops)
        self._checkpointer.committed()
        return outcomes

    async def migrate(self, *, statement_timeout: float | None = None) -> int:
        """Apply pending migrations (:mod:`vault.migrations`) in one write transaction,
        whose BEGIN IMMEDIATE excludes other processes' writers; safe from several.

        ``statement_timeout`` is unused: SQLite statements have no timeout to lift."""

        def execute(conn: sqlite3.Connection, step: Statement) -> list[Any]:
            if step.script:
                for statement in _split_sql(step.sql):
                    conn.execute(statement)
                return []
            return conn.execute(step.sql, step.args).fetchall()

        def run(conn: sqlite3.Connection) -> int:
            return drive(runner("sqlite"), lambda step: execute(conn, step))

        return await self._write(run)

    async def insert(
        self,
        record: RecordRow,
        dek: DekRow | None,
        *,
        link: Link | None = None,
        settle_outbox: str | None = None,
    ) -> None:
        """Insert a record and, when given, its new data key, its blind indexes and the
        deletion of its outbox row, in one transaction."""
        args = record.values()
        insert = SQL.insert_record
        if link is not None:
            insert = SQL.insert_linked_record
            args += (link.reference_idx, link.partner_customer_idx)

        def run(conn: sqlite3.Connection) -> None:
            if dek is not None:
                conn.execute(SQL.insert_dek, dek.values())
            conn.execute(insert, args)
            if settle_outbox is not None:
                conn.execute(_OUTBOX_DELETE, (settle_outbox,))

        # One statement needs no savepoint of its own: a failure leaves nothing behind.
        await self._write(run, atomic=dek is None and settle_outbox is None)

    async def delete_record(self, token: str) -> bool:
        """Delete a record and its data key when no other record shares it."""

        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT dek_id FROM records WHERE token = ?", (token,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM records WHERE token = ?", (token,))
            conn.execute(
                "DELETE FROM deks WHERE dek_id = ? AND customer_idx IS NULL"
                " AND NOT EXISTS (SELECT 1 FROM records WHERE dek_id = ?)",
                (row[0], row[0]),
            )
            return True

        return await self._write(run)

    async def rewrap_deks(self, changes: Sequence[DekRewrap]) -> int:
        """Compare-and-set each data key's (version, wrapped) pair; one transaction."""
        return await self._rewrap(
            "UPDATE deks SET kek_version = ?, wrapped = ?"
            " WHERE dek_id = ? AND kek_version = ? AND wrapped = ?",
            changes,
        )

    async def rewrap_idempotency_keys(self, changes: Sequence[DekRewrap]) -> int:
        """Compare-and-set each idempotency row's (version, wrapped key); one transaction."""
        return await self._rewrap(
            "UPDATE idempotency_keys SET kek_version = ?, wrapped_dek = ?"
            " WHERE key_idx = ? AND kek_version = ? AND wrapped_dek = ?",
            changes,
        )

    async def _rewrap(self, sql: str, changes: Sequence[DekRewrap]) -> int:
        if not changes:
            return 0
        rows = [
            (c.new_version, c.new_wrapped, c.dek_id, c.old_version, c.old_wrapped) for c in changes
        ]

        def run(conn: sqlite3.Connection) -> int:
            return conn.executemany(sql, rows).rowcount

        return await self._write(run)

    async def append_audit(self, entry: AuditEntry, link: AuditLinker) -> AuditRow:
        """Chain and insert one event; the head is read inside the writer's transaction.

        The transaction starts with BEGIN IMMEDIATE (see ``_run_batch``), which holds
        SQLite's write lock across processes, and appends in one group commit run in
        order, so each sees the one before it: the chain stays linear. Resolve events
        share the group commit with other writes, so auditing adds no fsync per read.
        """

        def run(conn: sqlite3.Connection) -> AuditRow:
            head = self._audit_head or conn.execute(SQL.audit_head).fetchone()
            seq, prev_hash = (head[0] + 1, head[1]) if head else (1, AUDIT_GENESIS)
            row = AuditRow(seq, entry, prev_hash, link(prev_hash, entry))
            conn.execute(
                SQL.insert_audit,
                (
                    seq,
                    entry.occurred_at,
                    entry.event_type,
                    entry.outcome,
                    entry.actor,
                    entry.origin,
                    entry.resource,
                    entry.detail,
                    prev_hash,
                    row.hash,
                ),
            )
            # Only after the insert stood: a refused event leaves the head where it was.
            self._audit_head = (seq, row.hash)
            return row

        return await self._write(run, atomic=True)

    # -- idempotency keys (vault.idempotency holds the logic) -------------------

    async def idempotency_insert(self, row: IdempotencyRow) -> IdempotencyRow | None:
        """Insert ``row`` unless a live row has its key; returns that live row, else None.

        One write transaction (BEGIN IMMEDIATE), so two requests (or two processes)
        racing on one key cannot both insert: exactly one gets None.
        """

        def run(conn: sqlite3.Connection) -> IdempotencyRow | None:
            found = conn.execute(SQL.idempotency_get, (row.key_idx,)).fetchone()
            if found is not None and IdempotencyRow(*found).expires_at > row.created_at:
                return IdempotencyRow(*found)
            erased = conn.execute(
                SQL.idempotency_tombstone, (row.key_idx, row.created_at)
            ).fetchone()
            if erased is not None:
                return erased_idempotency_row(row.key_idx, erased[0])
            conn.execute("DELETE FROM idempotency_keys WHERE key_idx = ?", (row.key_idx,))
            conn.execute(
                SQL.insert_idempotency,
                tuple(getattr(row, name) for name in IdempotencyRow.__slots__),
            )
            return None

        return await self._write(run)

    async def idempotency_claim(
        self, key_idx: str, *, owner_was: str | None, updated_was: str, owner: str, now: str
    ) -> bool:
        """Take over an in-flight row if nobody touched it since it was read (compare-and-set)."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE idempotency_keys SET owner = ?, updated_at = ?"
                " WHERE key_idx = ? AND state = 'in_flight' AND owner IS ? AND updated_at = ?",
                (owner, now, key_idx, owner_was, updated_was),
            )
            return cur.rowcount == 1

        return await self._write(run)

    async def idempotency_update(
        self,
        key_idx: str,
        *,
        owner: str,
        now: str,
        partner_result: bytes | None = None,
        response: bytes | None = None,
        release: bool = False,
    ) -> bool:
        """Store the partner result or the final response (which ends the row's flight).

        Only the current owner may write; False means another process took the row over.
        """

        sql, args = SQL.idempotency_update(
            key_idx,
            owner=owner,
            now=now,
            partner_result=partner_result,
            response=response,
            release=release,
        )

        def run(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, args).rowcount == 1

        return await self._write(run)

    async def idempotency_get(self, key_idx: str) -> IdempotencyRow | None:
        """One idempotency row by key index."""
        row = self._read_one(SQL.idempotency_get, (key_idx,))
        return IdempotencyRow(*row) if row else None

    async def idempotency_tombstoned(self, key_idx: str, now: str) -> bool:
        """Whether an erasure removed this key's row and its tombstone is still live."""
        return self._read_one(SQL.idempotency_tombstone, (key_idx, now)) is not None

    async def idempotency_purge(self, now: str) -> int:
        """Delete every row whose expiry has passed; returns how many."""

        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(SQL.purge_idempotency, (now,))
            conn.execute(SQL.purge_idempotency_tombstones, (now,))
            return cur.rowcount

        return await self._write(run)

    # -- reads ----------------------------------------------------------------

    def _read_all(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        if self._closed:
            raise StorageUnavailable("vault is closed")
        try:
            return self._reader.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageUnavailable("database read failed") from exc

    async def count_deks_by_version(self) -> dict[int, int]:
        """Data keys per KEK version (walks the kek_version index)."""
        rows = self._read_all(SQL.count_deks_by_version, ())
        return {int(version): int(count) for version, count in rows}

    async def count_idempotency_by_version(self, now: str) -> dict[int, int]:
        """Live idempotency rows per KEK version (their stored answers need that key)."""
        rows = self._read_all(SQL.count_idempotency_by_version, (now,))
        return {int(version): int(count) for version, count in rows}

    async def deks_not_on_version(
        self, version: int, *, after: str | None, limit: int
    ) -> list[DekRow]:
        """A page of data keys not on ``version``, in dek_id order (keyset pagination)."""
        rows = self._read_all(SQL.deks_not_on_version, (version, after or "", limit))
        return [DekRow(*row) for row in rows]

    async def idempotency_keys_not_on_version(
        self, version: int, *, now: str, after: str | None, limit: int
    ) -> list[IdempotencyKeyWrap]:
        """A page of live idempotency rows' keys not on ``version``, in key_idx order."""
        rows = self._read_all(
            SQL.idempotency_keys_not_on_version, (version, now, after or "", limit)
        )
        return [IdempotencyKeyWrap(*row) for row in rows]

    async def read_audit(
        self, *, after_seq: int = 0, limit: int = 1000, since: str | None = None
    ) -> list[AuditRow]:
        """A page of audit events in chain order."""
        rows = self._read_all(SQL.read_audit, (after_seq, since or "", limit))
        return [
            AuditRow(r[0], AuditEntry(r[1], r[2], r[3], r[4], r[5], r[6], r[7]), r[8], r[9])
            for r in rows
        ]

    async def audit_prune_point(self, before: str) -> AuditRow | None:
        """The newest event that, with every event before it, is older than ``before``."""
        # "+occurred_at" keeps SQLite on the primary key: walk from the oldest event and
        # stop at the first young one, instead of reading every young one by time.
        young = self._read_one(
            "SELECT seq FROM audit_events WHERE +occurred_at >= ? ORDER BY seq LIMIT 1",
            (before,),
        )
        row = self._read_one(SQL.audit_before, (young[0] if young else 2**63 - 1,))
        if row is None:
            return None
        entry = AuditEntry(row[1], row[2], row[3], row[4], row[5], row[6], row[7])
        return AuditRow(row[0], entry, row[8], row[9])

    async def prune_audit(self, through_seq: int, *, batch: int = 5000) -> int:
        """Delete events with seq <= ``through_seq``, oldest first, one batch per transaction."""

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(SQL.prune_audit, (through_seq, batch)).rowcount

        total = 0
        while deleted := await self._write(run):
            total += deleted
        return total

    def _read_one(self, sql: str, args: tuple[Any, ...]) -> Any:
        if self._closed:
            raise StorageUnavailable("vault is closed")
        try:
            return self._reader.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise StorageUnavailable("database read failed") from exc

    async def get_record(self, token: str) -> RecordRow | None:
        """Read one record by primary key, inline (see the module docstring)."""
        row = self._read_one(SQL.get_record, (token,))
        return RecordRow(*row) if row else None

    async def get_dek(self, dek_id: str) -> DekRow | None:
        """Read one wrapped data key by id."""
        row = self._read_one(SQL.get_dek, (dek_id,))
        return DekRow(*row) if row else None

    async def get_record_and_dek(self, token: str) -> tuple[RecordRow, DekRow | None] | None:
        """Read one record and its wrapped data key, inline, in one statement."""
        row = self._read_one(SQL.get_record_and_dek, (token,))
        return record_and_dek(row) if row else None

    async def get_customer_dek(self, customer_idx: str) -> DekRow | None:
        """Read a customer's wrapped data key by the customer's blind index."""
        row = self._read_one(SQL.get_customer_dek, (customer_idx,))
        return DekRow(*row) if row else None

    async def key_checks(self) -> dict[int, bytes]:
        """Every recorded key ring check value, by version (0: the index key)."""
        if self._closed:
            raise StorageUnavailable("vault is closed")
        try:
            rows = self._reader.execute(SQL.key_checks)
            return {int(version): bytes(value) for version, value in rows.fetchall()}
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise StorageUnavailable(SCHEMA_OUTDATED) from None
            raise StorageUnavailable("database read failed") from exc

    async def add_key_check(self, version: int, value: bytes, created_at: str) -> bytes:
        """Insert unless present, in one write transaction; returns the stored value."""

        def run(conn: sqlite3.Connection) -> bytes:
            conn.execute(SQL.add_key_check, (version, value, created_at))
            return bytes(conn.execute(SQL.key_check, (version,)).fetchone()[0])

        return await self._write(run)

    async def delete_key_check(self, version: int) -> None:
        """Delete one check value."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(SQL.delete_key_check, (version,))

        await self._write(run)

    async def dek_on_version(self, version: int) -> DekRow | None:
        """One data key wrapped by ``version`` (walks the kek_version index)."""
        row = self._read_one(SQL.dek_on_version, (version,))
        return DekRow(*row) if row else None

    async def dek_version_range(self) -> tuple[int, int] | None:
        """The lowest and highest KEK version wrapping a data key (the kek_version index's ends)."""
        row = self._read_one(SQL.dek_version_range, ())
        return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

    async def customer_record_sample(self) -> RecordRow | None:
        """One record with a customer (walks the customer index)."""
        row = self._read_one(SQL.customer_record_sample, ())
        return RecordRow(*row) if row else None

    async def ping(self) -> None:
        """Check the database file answers a query."""
        self._read_one("SELECT 1", ())

    async def close(self) -> None:
        """Finish queued writes, then close both connections."""
        if self._closed:
            return
        while self._flusher is not None:
            await asyncio.shield(self._flusher)
        self._closed = True
        self._executor.shutdown(wait=True)
        await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.close)
        self._reader.close()
        self._writer.close()
        self._write_lock.close()


class _Checkpointer:
    """Copies committed WAL frames into the database file, mostly off the commit path.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold
    (1,000 pages), so one group commit in every few hundred also waited for a few
    milliseconds of copying and an fsync of the database file: that was the p99 of a
    tokenize at a steady rate. Here a thread of its own does the copying with a PASSIVE
    checkpoint, beside the writer and the readers and waiting for neither. It cannot
    finish alone while writes go on (frames keep arriving), and the WAL only starts afresh
    once all of it is copied; so after each of its rounds the writer, before its next
    batch, copies the few frames written meanwhile (:meth:`finish`), and its next
    transaction restarts the WAL: the file stays as small as SQLite's own checkpoints
    kept it. The thread starts on the EVERY-th commit, so read-only users never start one;
    should it fail to open its connection, the writer checkpoints every EVERY commits.
    """

    # Commits between rounds: a few hundred pages of WAL at most, at any rate.
    EVERY: Final = 32
    # A quiet spell still gets its last commits checkpointed within this many seconds.
    IDLE_SECONDS: Final = 1.0

    def __init__(self, path: str, timeout_ms: int) -> None:
        self._path = path
        self._timeout_ms = timeout_ms
        self._commits = 0
        # Commits not yet checkpointed (set by the writer, cleared by the checkpoint thread).
        self._dirty = False
        # A round has copied the bulk: the writer copies the rest before its next batch.
        self._finish_due = False
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        # The thread could not open its connection: the writer checkpoints every round.
        self._inline = False
        self._closed = False

    def committed(self) -> None:
        """Note one commit (writer thread); every EVERY-th wakes the checkpoint thread."""
        self._dirty = True
        self._commits += 1
        if self._commits < self.EVERY:
            return
        self._commits = 0
        if self._inline:
            self._finish_due = True
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="vault-sqlite-checkpoint", daemon=True
            )
            self._thread.start()
        self._wanted.set()

    def finish(self, writer: sqlite3.Connection) -> None:
        """Writer thread, between batches: copy what the last round left, if it is done."""
        if not self._finish_due:
            return
        self._finish_due = False
        with contextlib.suppress(sqlite3.Error):  # busy: the next round tries again
            writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _run(self) -> None:
        try:
            conn = _connect(self._path, timeout_ms=self._timeout_ms)
        except sqlite3.Error:
            self._inline = self._finish_due = True
            return
        try:
            while True:
                woken = self._wanted.wait(self.IDLE_SECONDS)
                if self._closed:
                    break
                if not woken and not self._dirty:
                    continue
                self._wanted.clear()
                self._dirty = False
                try:
                    busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    continue  # briefly unavailable: the next round copies it all
                if not busy and frames > 0:
                    self._finish_due = True
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the thread (it finishes a round under way) and close its connection."""
        self._closed = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join()


class _WriteLock:
    """An flock queue in front of SQLite's write lock, shared by every process on the file.

    Several processes (`serve --workers`) writing one file would otherwise meet at BEGIN
    IMMEDIATE, where the loser sleeps in SQLite's busy handler for 1, 2, 5 … 100 ms steps:
    throughput falls and p99 climbs under contention. Here the loser polls an flock in steps
    of at most half a millisecond instead; after the busy timeout it goes ahead anyway and
    lets SQLite's own timeout decide, so a stuck process can never hang this one.
    """

    __slots__ = ("_fd", "_timeout")

    def __init__(self, path: Path, timeout: float) -> None:
        self._timeout = timeout
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            self._fd = None  # a read-only directory: SQLite's own locking still holds

    def __enter__(self) -> None:
        if self._fd is None:
            return
        pause, deadline = 0.00005, time.monotonic() + self._timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(pause)
                pause = min(pause * 2, 0.0005)
            else:
                return

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements; trigger bodies keep their inner semicolons."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    statements: list[str] = []
    pending = ""
    for piece in "\n".join(lines).split(";"):
        pending += piece + ";"
        # complete_statement is SQLite's own tokenizer: false inside BEGIN ... END.
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip())
    return statements


if TYPE_CHECKING:
    # Checked by mypy: the backend implements every method of the protocol, as declared.
    _: type[Backend] = SqliteBackend
