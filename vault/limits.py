"""Rate limits shared by every process on one database.

A proxy with several replicas would multiply each per-process limit by their number. On
PostgreSQL the backend offers the limits below, each decision one statement on one row of
``rate_limits`` (see :mod:`vault.backends.postgres_limits`); a SQLite vault serves one
process, which keeps its limits in memory (:func:`shared_limits` answers None).

Two shapes: a token bucket (``limit_take``: a sustained rate with a burst;
``limit_lease`` takes several of its requests in one decision, for a caller that spends
them locally) and a fixed
failure window (``limit_fail``, ``limit_blocked``: so many failures, then a pause until
the window ends). Keys are the caller's; they should carry no secret, as rows are stored
in clear.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from vault.store import Vault


@runtime_checkable
class SharedLimits(Protocol):
    """Limits a backend shares with every process using the same database."""

    async def limit_take(self, key: str, interval: float, burst: int) -> float:
        """Spend one request from ``key``'s bucket: 0.0 if allowed, else seconds until one is."""
        ...

    async def limit_lease(
        self, key: str, interval: float, burst: int, count: int
    ) -> tuple[int, float]:
        """Take up to ``count`` requests from ``key``'s bucket in one decision: how many
        were granted (0 to ``count``), and when none were, the seconds until one is."""
        ...

    async def limit_fail(self, key: str, window: float) -> tuple[int, float]:
        """Count one failure for ``key``: the failures in its window and the seconds it has left."""
        ...

    async def limit_blocked(self, prefix: str, limit: int) -> dict[str, float]:
        """Keys under ``prefix`` with at least ``limit`` failures in a live window: seconds left."""
        ...

    async def limit_sweep(self) -> int:
        """Delete the rows whose time has passed; how many went."""
        ...


def shared_limits(vault: Vault) -> SharedLimits | None:
    """The limits ``vault``'s backend shares between processes, or None (one process only)."""
    backend = vault.backend
    return backend if isinstance(backend, SharedLimits) else None
