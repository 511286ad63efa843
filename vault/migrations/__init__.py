"""Versioned schema migrations, and the one runner both backends use.

The scripts live beside this module, one folder per dialect (``sqlite/``, ``postgres/``),
named ``NNNN_what.sql``; the two folders hold the same versions. Each script is applied
once, in version order, and recorded in ``schema_migrations``.

:func:`runner` is the runner without the I/O: it yields each statement to execute and
takes back the rows it returned. A backend drives it (:func:`drive`, :func:`drive_async`)
inside one transaction under a lock every migrating process takes (SQLite: the writer's
``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock per schema), so replicas starting
together apply each migration once, and a failed script leaves the schema as it was.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

from vault.records import iso, utcnow


class Migration(NamedTuple):
    """One versioned script of one dialect."""

    version: int
    script: str


@dataclass(frozen=True, slots=True)
class Statement:
    """One step of a migration run: a statement with ``?`` placeholders and its arguments,
    or a whole migration script (``script``: several statements, no arguments)."""

    sql: str
    args: tuple[Any, ...] = ()
    script: bool = False


Run = Generator[Statement, list[Any], int]


def migration_scripts(dialect: str) -> list[Migration]:
    """The versioned migration scripts shipped for ``dialect``, in order."""
    folder = resources.files(__name__).joinpath(dialect)
    scripts = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql"):
            scripts.append(Migration(int(name.split("_", 1)[0]), entry.read_text("utf-8")))
    return sorted(scripts)


def runner(dialect: str) -> Run:
    """Apply every migration ``dialect`` lacks; returns the schema version now in force."""
    yield Statement(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in (yield Statement("SELECT version FROM schema_migrations"))}
    current = max(done, default=0)
    for migration in migration_scripts(dialect):
        if migration.version in done:
            continue
        yield Statement(migration.script, script=True)
        yield Statement(
            "INSERT INTO schema_migrations VALUES (?, ?)", (migration.version, iso(utcnow()))
        )
        current = max(current, migration.version)
    return current


def drive(run: Run, execute: Callable[[Statement], list[Any]]) -> int:
    """Run a migration with a synchronous ``execute`` (which returns a statement's rows)."""
    try:
        step = next(run)
        while True:
            step = run.send(execute(step))
    except StopIteration as finished:
        version: int = finished.value
        return version


async def drive_async(run: Run, execute: Callable[[Statement], Awaitable[list[Any]]]) -> int:
    """Run a migration with an asynchronous ``execute`` (which returns a statement's rows)."""
    try:
        step = next(run)
        while True:
            step = run.send(await execute(step))
    except StopIteration as finished:
        version: int = finished.value
        return version
