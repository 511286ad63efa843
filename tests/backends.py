"""Test helpers for running every vault test on both backends.

``RawRows`` reads and rewrites stored rows behind the vault's back (tamper and
moved-ciphertext tests) with the database's own client, on SQLite or PostgreSQL.
PostgreSQL tests each get a fresh schema in the shared test database, dropped after.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

# What each database raises when a trigger refuses a change.
REFUSED = (sqlite3.IntegrityError, asyncpg.RaiseError)

T = TypeVar("T")

PG_URL = os.environ.get("TOKENPROXY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_HOST = "127.0.0.1:5432"


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private loop in another thread.

    Sync fixtures use this to reach PostgreSQL whether or not the test's loop is running.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(_call(make))
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["value"]
    return result


async def _call(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


async def pg_execute(url: str, sql: str) -> None:
    """Run one statement on a short-lived connection."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_unreachable_reason(url: str = PG_URL) -> str | None:
    """None when the test server answers, else a short reason."""
    try:
        run_sync(lambda: pg_execute(url, "SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def with_query(url: str, **params: str) -> str:
    """``url`` with query parameters appended (asyncpg passes unknown ones as settings)."""
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def create_schema(url: str = PG_URL) -> tuple[str, str]:
    """A fresh uniquely named schema; returns (schema, URL whose search_path is it)."""
    schema = "tp_test_" + secrets.token_hex(6)
    run_sync(lambda: pg_execute(url, f"CREATE SCHEMA {schema}"))
    return schema, with_query(url, search_path=schema)


def drop_schema(schema: str, url: str = PG_URL) -> None:
    """Drop a schema made by ``create_schema`` and everything in it."""
    run_sync(lambda: pg_execute(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


class RawRows:
    """Direct access to the vault's tables, bypassing the vault (for tamper tests)."""

    def __init__(self, backend: str, *, path: Path | None = None, url: str | None = None) -> None:
        self.backend = backend
        self._path = path
        self._url = url

    async def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders on both backends) and commit; returns rows."""
        if self.backend == "sqlite":
            assert self._path is not None
            db = sqlite3.connect(self._path)
            try:
                rows = db.execute(sql, args).fetchall()
                db.commit()
            finally:
                db.close()
            return rows
        assert self._url is not None
        conn = await asyncpg.connect(self._url, timeout=5)
        try:
            n = 0

            def placeholder(_: object) -> str:
                nonlocal n
                n += 1
                return f"${n}"

            pg_sql = "".join(placeholder(c) if c == "?" else c for c in sql)
            return [tuple(r) for r in await conn.fetch(pg_sql, *args)]
        finally:
            await conn.close()

    async def insert_orphan_record(
        self, token: str, kind: str, dek_id: str, ciphertext: bytes, created_at: str
    ) -> None:
        """Restore a record row whose data key is gone, as restoring an old backup row would.

        SQLite's own client does not enforce foreign keys; on PostgreSQL the session
        skips them with ``session_replication_role = replica`` (the test user is superuser).
        """
        sql = (
            "INSERT INTO records (token, kind, dek_id, ciphertext, created_at)"
            " VALUES (?, ?, ?, ?, ?)"
        )
        args = (token, kind, dek_id, ciphertext, created_at)
        if self.backend == "sqlite":
            await self.query(sql, args)
            return
        assert self._url is not None
        conn = await asyncpg.connect(self._url, timeout=5)
        try:
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(sql.replace("?, ?, ?, ?, ?", "$1, $2, $3, $4, $5"), *args)
        finally:
            await conn.close()

    async def backup_copy(self, target: Path) -> tuple[str, str | None]:
        """A consistent copy of the whole vault, as a backup job takes it; returns its URL.

        SQLite: an online backup into ``target``. PostgreSQL: every table of the schema
        copied, in one repeatable-read snapshot, into a fresh schema, whose name is
        returned second (the caller drops it with ``drop_schema``).
        """
        if self.backend == "sqlite":
            assert self._path is not None
            src, dst = sqlite3.connect(self._path), sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()
            return f"sqlite:///{target}", None
        assert self._url is not None
        schema, url = create_schema()
        conn = await asyncpg.connect(self._url, timeout=5)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=False):
                tables = [
                    row[0]
                    for row in await conn.fetch(
                        "SELECT table_name FROM information_schema.tables"
                        " WHERE table_schema = current_schema()"
                    )
                ]
                for table in tables:
                    await conn.execute(
                        f"CREATE TABLE {schema}.{table} (LIKE {table} INCLUDING ALL);"  # noqa: S608
                        f" INSERT INTO {schema}.{table} SELECT * FROM {table}"
                    )
        finally:
            await conn.close()
        return url, schema

    async def deks_by_version(self) -> dict[int, int]:
        """Data keys per KEK version, counted straight from the table."""
        rows = await self.query("SELECT kek_version, count(*) FROM deks GROUP BY kek_version")
        return {int(v): int(n) for v, n in rows}

    async def tamper_audit(self, *statements: str) -> None:
        """Run SQL on the audit table as an attacker with owner rights would (guards dropped)."""
        if self.backend == "sqlite":
            await self.query("DROP TRIGGER audit_events_no_update")
            await self.query("DROP TRIGGER audit_events_prune_only_behind_checkpoint")
        else:
            await self.query("DROP TRIGGER audit_events_no_update ON audit_events")
            await self.query(
                "DROP TRIGGER audit_events_prune_only_behind_checkpoint ON audit_events"
            )
        for statement in statements:
            await self.query(statement)

    async def break_audit_inserts(self) -> None:
        """Make the database refuse every insert into the audit table."""
        if self.backend == "sqlite":
            await self.query(
                "CREATE TRIGGER audit_broken BEFORE INSERT ON audit_events"
                " BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
            )
            return
        await self.query(
            "CREATE FUNCTION audit_broken() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'disk says no'; END $$"
        )
        await self.query(
            "CREATE TRIGGER audit_broken BEFORE INSERT ON audit_events"
            " FOR EACH ROW EXECUTE FUNCTION audit_broken()"
        )

    async def get(self, token: str, column: str) -> Any:
        """One column of one record row."""
        rows = await self.query(f"SELECT {column} FROM records WHERE token = ?", (token,))  # noqa: S608
        return rows[0][0]

    async def set_dek(self, dek_id: str, column: str, value: Any) -> None:
        """Overwrite a column of one data key row."""
        await self.query(f"UPDATE deks SET {column} = ? WHERE dek_id = ?", (value, dek_id))  # noqa: S608

    async def set(self, column: str, value: Any, *, token: str | None = None) -> None:
        """Overwrite a column of one record (or of every record when ``token`` is None)."""
        if token is None:
            await self.query(f"UPDATE records SET {column} = ?", (value,))  # noqa: S608
        else:
            await self.query(
                f"UPDATE records SET {column} = ? WHERE token = ?",  # noqa: S608
                (value, token),
            )

    async def column_by_token(self, column: str) -> dict[str, Any]:
        """token -> column value for every record."""
        rows = await self.query(f"SELECT token, {column} FROM records")  # noqa: S608
        return dict(rows)

    async def count(self, table: str, where: str = "") -> int:
        """Number of rows in ``table`` (optionally filtered by a fixed SQL condition)."""
        sql = f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else "")  # noqa: S608
        rows = await self.query(sql)
        return int(rows[0][0])

    async def stored_bytes(self) -> bytes:
        """Everything the database holds for the vault, for leak scans.

        SQLite: the database file and its WAL/SHM siblings. PostgreSQL: every value of
        every row of the schema's tables (bytea raw, the rest as text).
        """
        if self.backend == "sqlite":
            assert self._path is not None
            parts = [p.read_bytes() for p in self._path.parent.glob(self._path.name + "*")]
            return b"\n".join(parts)
        tables = [
            row[0]
            for row in await self.query(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
        ]
        out: list[bytes] = []
        for table in tables:
            for row in await self.query(f"SELECT * FROM {table}"):  # noqa: S608
                out.extend(v if isinstance(v, bytes) else str(v).encode() for v in row)
        return b"\n".join(out)
