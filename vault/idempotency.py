"""Idempotency keys: exactly-once creation across retries, crashes and replicas.

A row is written *before* the partner call (durably, like a token), holding:

* ``key_idx`` — a blind index (HMAC under the key ring's index key) of client and key:
  keys are scoped per client, and the key a client chose is never stored in clear;
* ``request_mac`` — HMAC-SHA256 of the raw request body under a key derived from the
  index key. Not a bare SHA-256: the body holds a PAN, and a PAN has little entropy
  once its BIN, last four and the Luhn digit are known (about 10^6 to 10^9
  candidates, times 10^3 CVCs) — a plain hash in the database would be brute-forced
  offline in minutes. PCI DSS 3.5.1.1 asks for keyed hashes of PANs for this reason;
* ``state`` (``in_flight`` / ``done``) and the ``owner`` process (host/pid/boot nonce);
* the partner's answer and the pre-chosen token (``partner_result``) as soon as the
  partner answers, and the caller's final answer once the token is stored (``response``:
  opaque bytes the caller encodes and decodes; the vault knows nothing of HTTP) — both
  sealed with AES-256-GCM under a per-row data key wrapped by the key ring, with
  associated data binding each ciphertext to its row and purpose. The partner's fingerprint is
  never among them in clear: callers store its keyed blind index (``Vault.fingerprint_index``);
* ``customer_idx`` — the blind index of the customer the request names, if any.
  Erasing the customer deletes the row (and so its data key and sealed answers) and
  leaves a tombstone of the key's blind index until the row would have expired: a
  retry with the key raises :class:`IdempotencyErased` rather than running again,
  since the partner would replay the payment method the erasure detached.

The partner idempotency key is derived, never stored: ``tp_`` + HMAC(index-derived
key, client, key). Every attempt for one client key — retries, a takeover after a
crash — sends the same partner key, so the partner replays its first answer and never
creates a second payment method.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NoReturn

from vault.backends.base import IDEMPOTENCY_ERASED, Backend, IdempotencyRow
from vault.crypto import Sealer, _frame, dek_aad, derive_subkey, new_key
from vault.errors import UnknownKeyVersion, VaultError
from vault.records import Kind, iso, token_from_seed, utcnow
from vault.store import Vault

__all__ = [
    "Claim",
    "IdempotencyBusy",
    "IdempotencyErased",
    "IdempotencyMismatch",
    "IdempotencyOwnershipLost",
    "IdempotencyStore",
    "Owner",
    "Replay",
]

_AAD_LABEL = b"tokenproxy/idempotency/v1\x00"
IN_FLIGHT = "in_flight"
DONE = "done"


class IdempotencyMismatch(VaultError):
    """The key was first used with another request body."""


class IdempotencyBusy(VaultError):
    """The key's first request is still being processed by a live owner."""


class IdempotencyErased(VaultError):
    """The key's request belonged to a customer since erased; its answer is gone."""


class IdempotencyOwnershipLost(VaultError):
    """Another process took this in-flight row over (this one was thought dead)."""


@dataclass(frozen=True, slots=True)
class Owner:
    """Which process holds an in-flight row: host, pid and a nonce fresh at each start."""

    host: str
    pid: int
    boot: str

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(8))

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}/{self.boot}"

    @staticmethod
    def parse(text: str) -> Owner | None:
        """The owner a column names, or None when it is not one of ours."""
        host, _, rest = text.rpartition("/")
        host, _, pid = host.rpartition("/")
        if not host or not pid.isdigit():
            return None
        return Owner(host, int(pid), rest)

    def is_gone(self, other: Owner) -> bool:
        """Whether ``other``'s process has certainly died, as seen from this one.

        Only provable on the same host: its pid runs nothing, or runs this process
        under another boot nonce (pid reuse, e.g. pid 1 in a restarted container).
        Elsewhere the caller falls back on the row's age.
        """
        if other.host != self.host:
            return False
        if other.pid == self.pid:
            return other.boot != self.boot
        try:
            os.kill(other.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


@dataclass(frozen=True, slots=True)
class Replay:
    """A completed key: the final answer its first request stored, as it was given."""

    answer: bytes


@dataclass(slots=True)
class Claim:
    """This process now owns an in-flight key; ``partner_result`` is set when resuming."""

    key_idx: str
    request_mac: str
    partner_key: str
    sealer: Sealer
    partner_result: dict[str, Any] | None
    resumed: bool
    # The random part of the token reserved for this key (see reserved_token).
    token_seed: bytes = field(default=b"", repr=False)

    def reserved_token(self, kind: Kind) -> str:
        """The token this key's record will be stored under, known before the partner call.

        Drawn from the row's own data key (random, from ``secrets``, one per row), so every
        attempt at the key — a retry, a takeover after a crash — names the same token,
        and the partner call can carry it while its parameters stay the same under the
        partner key. A row made again after the key expired has a new data key, so a new
        token.
        """
        return token_from_seed(kind, self.token_seed)


class IdempotencyStore:
    """Begin, advance and finish idempotent requests in the vault's database."""

    def __init__(
        self,
        vault: Vault,
        *,
        ttl: float = 24 * 3600.0,
        stale_after: float = 60.0,
        owner: Owner | None = None,
    ) -> None:
        self.vault = vault
        self.backend: Backend = vault.backend
        self.ttl = ttl
        self.stale_after = stale_after
        self.owner = owner or Owner.current()
        self._owner_text = str(self.owner)
        index_key = vault.keys.index_key
        self._body_key = derive_subkey(index_key, "idempotency-request-body")
        self._partner_key = derive_subkey(index_key, "idempotency-partner-key")
        # Keys this process is working on right now: a row owned by us but not in
        # here was abandoned (its request failed half-way) and may be taken over.
        self._active: set[str] = set()

    # -- derivations ----------------------------------------------------------

    def key_index(self, client: str, key: str) -> str:
        """Blind index of (client, key): one client can never see another's key."""
        return self.vault.index("idempotency-key", f"{client}\x00{key}")

    def request_mac(self, body: bytes) -> str:
        """Keyed hash of a request body (see the module docstring for why it is keyed)."""
        return hmac.new(self._body_key, body, hashlib.sha256).hexdigest()

    def partner_key(self, client: str, key: str) -> str:
        """The idempotency key sent to the partner for (client, key): stable across retries."""
        mac = hmac.new(self._partner_key, _frame(b"", client, key), hashlib.sha256)
        return "tp_" + mac.hexdigest()

    # -- lifecycle ------------------------------------------------------------

    async def begin(
        self, client: str, key: str, body: bytes, *, customer_ref: str | None = None
    ) -> Claim | Replay:
        """Record the key before any side effect, or answer from what is recorded.

        Returns a Claim when this process must do the work (fresh, or taking over a
        stale in-flight row), a Replay when the key is done. Raises IdempotencyMismatch for
        another body, IdempotencyBusy while a live owner works on it, IdempotencyErased
        when an erasure removed the key's row. ``customer_ref`` (the customer the request
        names) lets erasing that customer find the row, whether or not it exists yet.
        """
        key_idx = self.key_index(client, key)
        mac = self.request_mac(body)
        now = utcnow()
        dek = new_key()
        active = self.vault.keys.active_version
        keys, aad = self.vault.keys, dek_aad(_dek_id(key_idx), active)
        if keys.is_local(active):
            version, wrapped = keys.wrap(dek, aad)
        else:  # a key service call: never on the event loop
            version, wrapped = await asyncio.to_thread(keys.wrap, dek, aad)
        row = IdempotencyRow(
            key_idx=key_idx,
            request_mac=mac,
            state=IN_FLIGHT,
            owner=self._owner_text,
            kek_version=version,
            wrapped_dek=wrapped,
            partner_result=None,
            response=None,
            created_at=iso(now),
            updated_at=iso(now),
            expires_at=iso(now + timedelta(seconds=self.ttl)),
            customer_idx=self.vault.index("customer", customer_ref) if customer_ref else None,
        )
        partner_key = self.partner_key(client, key)
        existing = await self.backend.idempotency_insert(row)
        if existing is None:
            # Marked active in the same event-loop step the insert's result arrives in:
            # a concurrent request of this process that sees the row sees it active.
            self._active.add(key_idx)
            return Claim(
                key_idx, mac, partner_key, Sealer(dek), None, resumed=False, token_seed=_seed(dek)
            )
        if existing.state == IDEMPOTENCY_ERASED:
            raise IdempotencyErased("idempotency key erased with its customer")
        if not hmac.compare_digest(existing.request_mac, mac):
            raise IdempotencyMismatch("idempotency key reused with another request")
        dek = await self._unwrap_key(existing)
        sealer = Sealer(dek)
        if existing.state == DONE:
            if existing.response is None:  # pragma: no cover - written together with state
                raise VaultError("completed idempotency row without a response")
            return Replay(sealer.open(existing.response, _aad(key_idx, "response", mac)))
        if not self._stale(existing):
            raise IdempotencyBusy("idempotency key in use")
        took = await self.backend.idempotency_claim(
            key_idx,
            owner_was=existing.owner,
            updated_was=existing.updated_at,
            owner=self._owner_text,
            now=iso(utcnow()),
        )
        if not took:
            raise IdempotencyBusy("idempotency key in use")
        self._active.add(key_idx)
        result = None
        if existing.partner_result is not None:
            plain = sealer.open(existing.partner_result, _aad(key_idx, "partner", mac))
            result = json.loads(plain)
        return Claim(key_idx, mac, partner_key, sealer, result, resumed=True, token_seed=_seed(dek))

    async def record_partner(self, claim: Claim, result: dict[str, Any]) -> None:
        """Durably keep what the partner answered (and the token to use) before the vault write.

        Raises IdempotencyErased when the customer's erasure removed the row meanwhile,
        IdempotencyOwnershipLost when another process took it over.
        """
        aad = _aad(claim.key_idx, "partner", claim.request_mac)
        blob = claim.sealer.seal(json.dumps(result).encode(), aad)
        ok = await self.backend.idempotency_update(
            claim.key_idx, owner=self._owner_text, now=iso(utcnow()), partner_result=blob
        )
        if not ok:
            await self._lost(claim)
        claim.partner_result = result

    async def complete(self, claim: Claim, answer: bytes) -> None:
        """Store the final answer (sealed) and end the flight; later requests replay it.

        ``answer`` is opaque here: what the caller needs to give the same answer again.
        Raises as :meth:`record_partner` does when the row is no longer this claim's.
        """
        blob = claim.sealer.seal(answer, _aad(claim.key_idx, "response", claim.request_mac))
        try:
            ok = await self.backend.idempotency_update(
                claim.key_idx, owner=self._owner_text, now=iso(utcnow()), response=blob
            )
        finally:
            self._active.discard(claim.key_idx)
        if not ok:
            await self._lost(claim)

    async def release(self, claim: Claim) -> None:
        """Give the row up after a failure whose outcome is unknown, so a retry resumes it now."""
        self._active.discard(claim.key_idx)
        await self.backend.idempotency_update(
            claim.key_idx, owner=self._owner_text, now=iso(utcnow()), release=True
        )

    def abandon(self, claim: Claim) -> None:
        """Forget a claim without writing (the write itself failed); it reads as stale to us."""
        self._active.discard(claim.key_idx)

    async def purge_expired(self) -> int:
        """Delete expired keys; returns how many."""
        count: int = await self.backend.idempotency_purge(iso(utcnow()))
        return count

    # -- helpers --------------------------------------------------------------

    async def _lost(self, claim: Claim) -> NoReturn:
        """The row is no longer ours: erased with its customer, or taken over."""
        self._active.discard(claim.key_idx)
        if await self.backend.idempotency_tombstoned(claim.key_idx, iso(utcnow())):
            raise IdempotencyErased("idempotency key erased with its customer")
        raise IdempotencyOwnershipLost("idempotency row taken over")

    async def _unwrap(self, row: IdempotencyRow) -> Sealer:
        return Sealer(await self._unwrap_key(row))

    async def _unwrap_key(self, row: IdempotencyRow) -> bytes:
        try:
            return await self._unwrap_once(row)
        except UnknownKeyVersion:
            # Wrapped by a replica that saw a rotation this process has not: look, retry.
            if not await self.vault.refresh_keys(force=True):
                raise
            return await self._unwrap_once(row)

    async def _unwrap_once(self, row: IdempotencyRow) -> bytes:
        keys, version = self.vault.keys, row.kek_version
        aad = dek_aad(_dek_id(row.key_idx), version)
        if keys.is_local(version):
            dek: bytes = keys.unwrap(version, row.wrapped_dek, aad)
            return dek
        unwrapped: bytes = await asyncio.to_thread(keys.unwrap, version, row.wrapped_dek, aad)
        return unwrapped

    def _stale(self, row: IdempotencyRow) -> bool:
        """May this in-flight row be taken over? Released, owner dead, or silent too long."""
        if row.owner is None:
            return True
        if row.owner == self._owner_text:
            return row.key_idx not in self._active
        other = Owner.parse(row.owner)
        if other is not None and self.owner.is_gone(other):
            return True
        age = utcnow() - _parse_iso(row.updated_at)
        return age.total_seconds() > self.stale_after


def _seed(dek: bytes) -> bytes:
    """The reserved token's random part: a one-way function of the row's data key."""
    return hmac.new(dek, b"tokenproxy/idempotency/reserved-token", hashlib.sha256).digest()[:24]


def _dek_id(key_idx: str) -> str:
    return "idem_" + key_idx


def row_key_aad(key_idx: str, kek_version: int) -> bytes:
    """Associated data of an idempotency row's wrapped data key (rewrap moves it too)."""
    return dek_aad(_dek_id(key_idx), kek_version)


def _aad(key_idx: str, purpose: str, request_mac: str) -> bytes:
    """Binds a sealed blob to its row, its purpose and the request it answers."""
    return _frame(_AAD_LABEL, key_idx, purpose, request_mac)


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)
