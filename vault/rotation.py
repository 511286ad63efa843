"""Key lifecycle over a live vault: status, online rewrap, retirement, start-up coverage check.

Runbook (docs/keys-and-audit.md): ``keys rotate`` adds a KEK version and makes it active;
serving processes pick it up within seconds (see ``LocalKekProvider``); ``keys rewrap``
re-wraps every data key still on an older version; ``keys retire V`` destroys version V
once no data key uses it (records' data keys and live idempotency rows' keys alike, as
:func:`count_key_use` counts them). Records are never re-encrypted: only the wrapped DEKs
change, one compare-and-set row update each, so readers always find a (version, wrapped)
pair that some key in the ring opens, and a rewrap killed at any point resumes by simply
running again (rows already moved no longer match "not on the active version").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from vault.backends.base import DekRewrap
from vault.crypto import dek_aad
from vault.errors import DecryptionFailed, KeyInUse, KeyRingError
from vault.idempotency import row_key_aad
from vault.keys.ring import KeyInfo
from vault.records import iso, utcnow
from vault.store import Vault

__all__ = [
    "KeyAdmin",
    "KeyUse",
    "KeyVersionStatus",
    "RewrapProgress",
    "check_key_coverage",
    "count_key_use",
    "key_status",
    "retire_version",
    "rewrap",
    "rewrap_remaining",
]

DEFAULT_BATCH = 2000
_MAX_PASSES = 5


class KeyAdmin(Protocol):
    """What ``keys rotate`` / ``keys retire`` need from a provider beyond KekProvider."""

    def rotate(self) -> int:
        """Add a version, make it active for new wraps; returns it."""
        ...

    def retire(self, version: int, *, in_use: int) -> None:
        """Retire ``version``; KeyInUse while ``in_use`` > 0 or it is active."""
        ...


@dataclass(frozen=True, slots=True)
class KeyUse:
    """What one KEK version wraps: record data keys and live idempotency rows' keys."""

    deks: int = 0
    idempotency_keys: int = 0

    @property
    def total(self) -> int:
        """Every wrapped key that needs this version to open."""
        return self.deks + self.idempotency_keys


@dataclass(frozen=True, slots=True)
class KeyVersionStatus:
    """One KEK version as `keys list` shows it; ``state`` is 'unknown' for a version
    that wrapped keys name but the key ring does not hold."""

    version: int
    created_at: datetime | None
    state: str
    deks: int
    idempotency_keys: int = 0

    @property
    def in_use(self) -> int:
        """What `keys retire` counts: every wrapped key on this version."""
        return self.deks + self.idempotency_keys


@dataclass(slots=True)
class RewrapProgress:
    """Counts of a rewrap run; ``remaining`` is an estimate until the run ends."""

    target_version: int
    total: int = 0
    rewrapped: int = 0
    skipped: int = 0
    failed: int = 0
    remaining: int = 0
    batches: int = 0


async def count_key_use(vault: Vault) -> dict[int, KeyUse]:
    """Per KEK version, the wrapped keys that need it: the one count list, retire and rewrap use.

    Expired idempotency rows are left out: nothing opens them again (a new request with
    their key replaces them), so they hold no version and rewrap does not move them.
    """
    deks = await vault.backend.count_deks_by_version()
    idem = await vault.backend.count_idempotency_by_version(iso(utcnow()))
    return {
        version: KeyUse(deks.get(version, 0), idem.get(version, 0))
        for version in sorted(deks.keys() | idem.keys())
    }


async def key_status(vault: Vault) -> list[KeyVersionStatus]:
    """Every version the provider knows plus any the vault's wrapped keys name."""
    use = await count_key_use(vault)
    infos: dict[int, KeyInfo] = {info.version: info for info in vault.keys.versions()}
    status = []
    for version in sorted(infos.keys() | use.keys()):
        info = infos.get(version)
        n = use.get(version, KeyUse())
        status.append(
            KeyVersionStatus(
                version,
                info.created_at if info else None,
                info.state.value if info else "unknown",
                n.deks,
                n.idempotency_keys,
            )
        )
    return status


async def rewrap_remaining(vault: Vault) -> int:
    """How many wrapped keys (records' and idempotency rows') are not on the active version."""
    active = vault.keys.active_version
    return sum(n.total for version, n in (await count_key_use(vault)).items() if version != active)


async def check_key_coverage(vault: Vault, *, source: str = "key ring") -> None:
    """Raise KeyRingError if data keys name a retired or unknown version (start-up check).

    Such keys mean the key ring is the wrong one (restored from another backup, or another
    environment's), or material was destroyed while still in use. Refusing to start says so
    at once, instead of answering 503 for an unknown share of records later.

    Every replica runs this at every start, so it costs index probes, not a scan: the
    lowest and highest version in use, then one probe per version between them that the
    ring lacks or retired (a handful: one per rotation). Only on failure are the keys
    counted, for the message. Idempotency rows are not checked here: they expire, and
    `keys retire` counts them before a version goes.
    """
    span = await vault.backend.dek_version_range()
    if span is None:
        return
    usable = {info.version for info in vault.keys.versions() if info.state.value != "retired"}
    low, high = span
    bad = [version for version in dict.fromkeys((low, high)) if version not in usable]
    if not bad:
        # Both ends are ring versions, so the span between them is the ring's history.
        bad = [
            version
            for version in range(low + 1, high)
            if version not in usable and await vault.backend.dek_on_version(version) is not None
        ]
    if not bad:
        return
    for status in await key_status(vault):
        if status.version in bad and status.in_use and status.state in {"retired", "unknown"}:
            where = "is retired" if status.state == "retired" else "is not in the key ring"
            raise KeyRingError(
                f"{source}: key version {status.version} {where} but still wraps "
                f"{status.in_use} data key(s) in the vault: wrong key ring, or restore the one "
                "holding it"
            )


async def rewrap(
    vault: Vault,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_batch: Callable[[RewrapProgress], None] | None = None,
) -> RewrapProgress:
    """Re-wrap every key not on the active version; safe to kill and run again.

    Records' data keys move first, then live idempotency rows' keys (their stored
    answers need them until they expire). Each batch is read, unwrapped with the old
    version, wrapped with the active one and written as compare-and-set row updates in
    one transaction. Keys that fail to unwrap (tampered row, missing version) are counted
    in ``failed`` and left as they are. Passes repeat while keys remain that a pass could
    move (a server that had not yet seen the rotation may create a few meanwhile).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    keys = vault.keys
    keys.refresh(force=True)
    target = keys.active_version
    progress = RewrapProgress(target_version=target)
    progress.total = progress.remaining = await rewrap_remaining(vault)
    for _ in range(_MAX_PASSES):
        failed = 0
        for table in (_deks_table(vault), _idempotency_table(vault)):
            failed += await _rewrap_pass(
                vault,
                table,
                target,
                batch_size=batch_size,
                progress=progress,
                on_batch=on_batch,
                failed_before=failed,
            )
        progress.failed = failed
        progress.remaining = await rewrap_remaining(vault)
        if progress.remaining <= progress.failed:
            break
        progress.total = progress.rewrapped + progress.remaining
    return progress


@dataclass(frozen=True, slots=True)
class _Table:
    """Where wrapped keys live and how their associated data is formed."""

    page: Callable[[int, str | None, int], Awaitable[list[DekRewrap]]]
    apply: Callable[[Sequence[DekRewrap]], Awaitable[int]]
    aad: Callable[[str, int], bytes]


def _deks_table(vault: Vault) -> _Table:
    async def page(version: int, after: str | None, limit: int) -> list[DekRewrap]:
        rows = await vault.backend.deks_not_on_version(version, after=after, limit=limit)
        return [DekRewrap(r.dek_id, r.kek_version, r.wrapped, 0, b"") for r in rows]

    return _Table(page, vault.backend.rewrap_deks, dek_aad)


def _idempotency_table(vault: Vault) -> _Table:
    async def page(version: int, after: str | None, limit: int) -> list[DekRewrap]:
        rows = await vault.backend.idempotency_keys_not_on_version(
            version, now=iso(utcnow()), after=after, limit=limit
        )
        return [DekRewrap(r.key_idx, r.kek_version, r.wrapped, 0, b"") for r in rows]

    return _Table(page, vault.backend.rewrap_idempotency_keys, row_key_aad)


async def _rewrap_pass(
    vault: Vault,
    table: _Table,
    target: int,
    *,
    batch_size: int,
    progress: RewrapProgress,
    on_batch: Callable[[RewrapProgress], None] | None,
    failed_before: int,
) -> int:
    """One walk over a table's keys in id order; returns how many failed to unwrap.

    The write of one batch (a transaction and its fsync) overlaps the unwrap/wrap of the
    next: pages are disjoint key ranges, so the two never touch the same row. Progress is
    reported only for committed batches.
    """
    keys = vault.keys
    failed = 0
    after: str | None = None
    in_flight: tuple[asyncio.Task[int], int] | None = None

    async def settle(flight: tuple[asyncio.Task[int], int]) -> None:
        task, attempted = flight
        changed = await task
        progress.rewrapped += changed
        progress.skipped += attempted - changed
        progress.batches += 1
        done = progress.rewrapped + progress.skipped + failed_before + failed
        progress.remaining = max(0, progress.total - done)
        if on_batch is not None:
            on_batch(progress)

    try:
        while True:
            rows = await table.page(target, after, batch_size)
            if not rows:
                break
            changes: list[DekRewrap] = []
            for row in rows:
                try:
                    dek = keys.unwrap(
                        row.old_version, row.old_wrapped, table.aad(row.dek_id, row.old_version)
                    )
                except (DecryptionFailed, KeyRingError):
                    failed += 1
                    continue
                version, wrapped = keys.wrap(dek, table.aad(row.dek_id, target))
                if version != target:
                    raise KeyRingError("the active key version changed during rewrap; run again")
                changes.append(
                    DekRewrap(row.dek_id, row.old_version, row.old_wrapped, target, wrapped)
                )
            after = rows[-1].dek_id
            if in_flight is not None:
                flight, in_flight = in_flight, None
                await settle(flight)
            task = asyncio.ensure_future(table.apply(changes))
            in_flight = (task, len(changes))
        if in_flight is not None:
            flight, in_flight = in_flight, None
            await settle(flight)
    finally:
        if in_flight is not None:
            # Leave no write running behind an error; its batch is simply done again later.
            in_flight[0].cancel()
            with contextlib.suppress(BaseException):
                await in_flight[0]
    return failed


async def retire_version(vault: Vault, admin: KeyAdmin, version: int) -> int:
    """Retire ``version`` once nothing in the vault needs it; returns the count (0).

    Counts what `keys list` shows (:func:`count_key_use`): records' data keys and live
    idempotency rows' keys, which `keys rewrap` moves alike.
    """
    use = (await count_key_use(vault)).get(version, KeyUse())
    if use.total and version != vault.keys.active_version:
        raise KeyInUse(
            f"key version {version} still wraps {use.deks} record data key(s) and "
            f"{use.idempotency_keys} idempotency key(s); run `tokenproxy keys rewrap` first"
        )
    admin.retire(version, in_use=use.total)
    # After the ring file: a crash in between leaves a row for a retired version, which
    # the key ring check skips.
    await vault.forget_key_check(version)
    return use.total
