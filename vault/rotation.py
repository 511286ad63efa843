"""Key lifecycle over a live vault: status, online rewrap, retirement, start-up coverage check.

Runbook (docs/keys-and-audit.md): ``keys rotate`` adds a KEK version and makes it active;
serving processes pick it up within seconds (see ``LocalKekProvider``); ``keys rewrap``
re-wraps every data key still on an older version; ``keys retire V`` destroys version V
once no data key uses it. Records are never re-encrypted: only the 60-byte wrapped DEKs
change, one compare-and-set row update each, so readers always find a (version, wrapped)
pair that some key in the ring opens, and a rewrap killed at any point resumes by simply
running again (rows already moved no longer match "not on the active version").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from vault.backends.base import DekRewrap
from vault.crypto import dek_aad
from vault.errors import DecryptionFailed, KeyRingError
from vault.keyring import KeyInfo
from vault.records import iso, utcnow
from vault.store import Vault

__all__ = [
    "KeyAdmin",
    "KeyVersionStatus",
    "RewrapProgress",
    "check_key_coverage",
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
class KeyVersionStatus:
    """One KEK version as `keys list` shows it; ``state`` is 'unknown' for a version
    that data keys name but the key ring does not hold."""

    version: int
    created_at: datetime | None
    state: str
    deks: int


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


async def key_status(vault: Vault) -> list[KeyVersionStatus]:
    """Every version the provider knows plus any the vault's data keys name."""
    counts = await vault.backend.count_deks_by_version()
    infos: dict[int, KeyInfo] = {info.version: info for info in vault.keys.versions()}
    status = [
        KeyVersionStatus(i.version, i.created_at, i.state.value, counts.get(i.version, 0))
        for i in infos.values()
    ]
    status += [KeyVersionStatus(v, None, "unknown", n) for v, n in counts.items() if v not in infos]
    return sorted(status, key=lambda s: s.version)


async def rewrap_remaining(vault: Vault) -> int:
    """How many data keys are not yet on the provider's active version."""
    counts = await vault.backend.count_deks_by_version()
    active = vault.keys.active_version
    return sum(n for version, n in counts.items() if version != active)


async def check_key_coverage(vault: Vault, *, source: str = "key ring") -> None:
    """Raise KeyRingError if data keys name a retired or unknown version (start-up check).

    Such keys mean the key ring is the wrong one (restored from another backup, or another
    environment's), or material was destroyed while still in use. Refusing to start says so
    at once, instead of answering 503 for an unknown share of records later.
    """
    for status in await key_status(vault):
        if status.deks and status.state in {"retired", "unknown"}:
            where = "is retired" if status.state == "retired" else "is not in the key ring"
            raise KeyRingError(
                f"{source}: key version {status.version} {where} but still wraps "
                f"{status.deks} data key(s) in the vault: wrong key ring, or restore the one "
                "holding it"
            )


async def rewrap(
    vault: Vault,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_batch: Callable[[RewrapProgress], None] | None = None,
) -> RewrapProgress:
    """Re-wrap every data key not on the active version; safe to kill and run again.

    Each batch is read, unwrapped with the old version, wrapped with the active one and
    written as compare-and-set row updates in one transaction. Keys that fail to unwrap
    (tampered row, missing version) are counted in ``failed`` and left as they are.
    Passes repeat while keys remain that a pass could move (a server that had not yet
    seen the rotation may create a few meanwhile).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    keys = vault.keys
    keys.refresh(force=True)
    target = keys.active_version
    progress = RewrapProgress(target_version=target)
    progress.total = progress.remaining = await rewrap_remaining(vault)
    for _ in range(_MAX_PASSES):
        failed = await _rewrap_pass(vault, target, batch_size, progress, on_batch)
        progress.failed = failed
        progress.remaining = await rewrap_remaining(vault)
        if progress.remaining <= progress.failed:
            break
        progress.total = progress.rewrapped + progress.remaining
    return progress


async def _rewrap_pass(
    vault: Vault,
    target: int,
    batch_size: int,
    progress: RewrapProgress,
    on_batch: Callable[[RewrapProgress], None] | None,
) -> int:
    """One walk over the data keys in dek_id order; returns how many failed to unwrap.

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
        progress.remaining = max(0, progress.total - progress.rewrapped - progress.skipped - failed)
        if on_batch is not None:
            on_batch(progress)

    try:
        while True:
            rows = await vault.backend.deks_not_on_version(target, after=after, limit=batch_size)
            if not rows:
                break
            changes: list[DekRewrap] = []
            for row in rows:
                try:
                    dek = keys.unwrap(
                        row.kek_version, row.wrapped, dek_aad(row.dek_id, row.kek_version)
                    )
                except (DecryptionFailed, KeyRingError):
                    failed += 1
                    continue
                version, wrapped = keys.wrap(dek, dek_aad(row.dek_id, target))
                if version != target:
                    raise KeyRingError("the active key version changed during rewrap; run again")
                changes.append(DekRewrap(row.dek_id, row.kek_version, row.wrapped, target, wrapped))
            after = rows[-1].dek_id
            if in_flight is not None:
                flight, in_flight = in_flight, None
                await settle(flight)
            task = asyncio.ensure_future(vault.backend.rewrap_deks(changes))
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

    Data keys are moved off a version by rewrap; idempotency rows are not rewrapped
    (they live a day at most), so a version stays in use until the last live row
    wrapped under it expires. Retiring earlier would make those stored answers
    unreadable, and a client's retry would then fail instead of replaying.
    """
    in_use = (await vault.backend.count_deks_by_version()).get(version, 0)
    in_use += (await vault.backend.count_idempotency_by_version(iso(utcnow()))).get(version, 0)
    admin.retire(version, in_use=in_use)
    return in_use
