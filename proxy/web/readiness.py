"""Readiness for /readyz: a recent result kept in the background, never a query per probe.

A probe that queried the database itself would borrow from the request pool: a busy pool
fails the probe, the pod leaves the Service, its load lands on the others, and their
pools fill in turn. So the check runs here, every ``READY_INTERVAL`` seconds, and
/readyz answers from its last result without waiting on anything.

Readiness says whether *this* pod should get traffic rather than another, so it fails
only on what is this pod's own: not started yet, shutting down, or a key ring that is
not the vault's (a stale or wrong ring, fixed by the pod's own reload). A database or
key-service outage is every pod's alike: taking them all out of the Service would turn
the app's ``503 vault_unavailable``, which clients retry, into refused connections. Such
a pod stays ready and reports ``degraded`` with the reason; ``tokenproxy_vault_up``
shows it to alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from aiohttp import web

from proxy.infra.metrics import Metrics
from proxy.web.tasks import cancel_and_wait
from vault import KeyRingBehind, KeyRingError, KeyRingMismatch, StorageUnavailable, Vault

_log = structlog.get_logger("tokenproxy.readiness")

# Seconds between checks: the longest a new problem (or its end) goes unseen by /readyz.
READY_INTERVAL = 1.0

READY = "ready"
DEGRADED = "degraded"
STARTING = "starting"
STOPPING = "stopping"
KEY_RING_MISMATCH = "key_ring_mismatch"
KEY_RING_BEHIND = "key_ring_behind"


@dataclass(frozen=True, slots=True)
class Answer:
    """What /readyz says: HTTP status and JSON body."""

    http_status: int
    body: dict[str, str]


class Readiness:
    """The last readiness result of one API app, and the loop that refreshes it."""

    def __init__(
        self, metrics: Metrics, *, timeout: float, interval: float = READY_INTERVAL
    ) -> None:
        self.metrics = metrics
        self.timeout = timeout
        self.interval = interval
        self._status = STARTING
        self._reason: str | None = None
        self._target: tuple[Vault, str] | None = None

    def answer(self) -> Answer:
        """The answer for /readyz from the last result: 200 ready or degraded, else 503."""
        body = {"status": self._status}
        if self._reason is not None:
            body["reason"] = self._reason
        return Answer(200 if self._status in {READY, DEGRADED} else 503, body)

    def stopping(self) -> None:
        """Leave the Service while in-flight requests drain."""
        self._set(STOPPING, None, vault_up=None)

    async def probe(self) -> None:
        """Check the vault and the key ring once and keep the result (no-op before start-up)."""
        if self._target is None:
            return
        vault, source = self._target
        try:
            async with asyncio.timeout(self.timeout):
                await vault.ping()
                # One small query while nothing changed; a rotation adopted since start-up
                # is verified here (and its check value recorded if the CLI has not yet).
                await vault.check_key_ring(source=source)
        except (StorageUnavailable, TimeoutError):
            self._set(DEGRADED, "vault_unavailable", vault_up=False)
        except KeyRingBehind as exc:
            # A rotation on its way (kubelet updates a Secret volume within about a minute):
            # every pod on the old file is in the same place, and each still serves all but
            # the newest version's keys. Unready, they would all leave the Service at once.
            if self._reason != KEY_RING_BEHIND:
                _log.warning("key_ring_behind", problem=str(exc))
            self._set(DEGRADED, KEY_RING_BEHIND, vault_up=True)
        except KeyRingMismatch as exc:
            if self._status != KEY_RING_MISMATCH:
                _log.error("key_ring_mismatch", problem=str(exc))
            self._set(KEY_RING_MISMATCH, None, vault_up=True)
        except KeyRingError:
            # Undecidable (the key service is unreachable): every pod is in the same place.
            self._set(DEGRADED, "key_ring_unavailable", vault_up=True)
        else:
            self._set(READY, None, vault_up=True)

    def _set(self, status: str, reason: str | None, *, vault_up: bool | None) -> None:
        if status != self._status or reason != self._reason:
            _log.info("readiness", status=status, reason=reason)
        self._status, self._reason = status, reason
        self.metrics.ready.set(1 if status in {READY, DEGRADED} else 0)
        if vault_up is not None:
            self.metrics.vault_up.set(1 if vault_up else 0)

    @contextlib.asynccontextmanager
    async def probing(self, vault: Vault, *, source: str) -> AsyncIterator[None]:
        """Probe ``vault`` (``source`` names the key ring in messages) until the block ends.

        The first probe is done before the block is entered.
        """
        self._target = (vault, source)
        await self.probe()
        task = asyncio.create_task(self.run())
        try:
            yield
        finally:
            await cancel_and_wait(task)

    async def run(self) -> None:
        """Probe every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.probe()


READINESS = web.AppKey("readiness", Readiness)
