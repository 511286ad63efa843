"""Which key ring a vault belongs to: check values recorded in the vault, verified on open.

A key ring that is not the vault's own (a fresh one, another environment's, the right
KEK beside another index key) opens nothing: blind indexes find no customer, data keys
fail to unwrap. Without a check that looks like an empty vault, and erasure would
"shred" keys it never saw. So the vault records, in ``key_checks``:

* row 0: an HMAC under the index key (``crypto.key_check_mac``);
* row N: the provider's check value of KEK version N (local ring: an HMAC under a key
  derived from that KEK; AWS KMS: a KMS ciphertext that only that KMS key decrypts to an
  HMAC under the index key).

:meth:`KeyCheckMixin.check_key_ring` runs whenever the vault is opened (``Vault.open``),
at server start, in every CLI command and on each ``/readyz``, and raises
:class:`KeyRingMismatch` (one line) when the ring in hand disagrees with a recorded value
or lacks a recorded version. Retired versions are skipped (their material is gone);
``keys retire`` removes their rows.

What is missing is recorded with the ring in hand, but only once that ring has proven
it opens the vault's data: the index key must verify the first audit event's chain hash
(or, with no audit trail, recompute a customer record's blind index), and each KEK
version must unwrap one data key it wraps, if any. That covers ``keys init`` (an empty
vault), ``keys rotate`` (the new version has no data yet), a server that adopted a
rotation before the CLI recorded it, and a vault created before check values existed,
which gets them on its first open. A ring that cannot prove itself is refused like a
mismatching one.

A verified state (the ring's versions and the rows) is remembered, so a repeated check
costs one small query and no cryptography until either side changes.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from vault.audit import audit_key, link_hash
from vault.crypto import dek_aad, key_check_mac
from vault.errors import DecryptionFailed, KeyRingBehind, KeyRingError, KeyRingMismatch
from vault.keys.ring import KeyState
from vault.records import iso, utcnow

if TYPE_CHECKING:
    from vault.backends.base import Backend, RecordRow
    from vault.keys.ring import KekProvider
    from vault.records import Record

__all__ = ["INDEX_CHECK", "KeyCheckMixin", "index_check_value"]

# The row holding the index key's check value; KEK versions start at 1.
INDEX_CHECK = 0

_Seen = tuple[tuple[tuple[int, str], ...], frozenset[tuple[int, bytes]]]


def index_check_value(index_key: bytes) -> bytes:
    """The check value of an index key."""
    return key_check_mac(index_key, "index")


class KeyCheckMixin:
    """Verify (and complete) the vault's record of its key ring; mixed into Vault."""

    if TYPE_CHECKING:
        backend: Backend
        keys: KekProvider

        def index(self, domain: str, value: str) -> str: ...

        async def _open_row(self, row: RecordRow) -> Record: ...

    _key_check_seen: _Seen | None = None

    async def check_key_ring(self, *, source: str = "key ring") -> None:
        """Raise KeyRingMismatch unless the provider's ring is the one this vault records.

        ``source`` names the ring in messages (e.g. ``key ring /etc/tokenproxy/keys.json``).
        """
        rows = await self.backend.key_checks()
        if self._seen(rows) == self._key_check_seen:
            return
        infos = {info.version: info for info in self.keys.versions()}
        if any(v != INDEX_CHECK and v not in infos for v in rows) and self.keys.refresh(force=True):
            # Another process (a rotation Job) recorded a version this process has not read
            # yet: its key file may already hold it (on Kubernetes once kubelet updated the
            # Secret volume). Nothing else makes an idle, unready process look again.
            infos = {info.version: info for info in self.keys.versions()}
        index_value = index_check_value(self.keys.index_key)
        if INDEX_CHECK in rows:
            if not hmac.compare_digest(rows[INDEX_CHECK], index_value):
                raise _mismatch(source, "its index key is not the one the vault recorded")
        else:
            await self._prove_index_key(source)
        for version, value in sorted(rows.items()):
            if version == INDEX_CHECK:
                continue
            info = infos.get(version)
            if info is None and infos and version > max(infos):
                # Newer than all this ring holds: a rotation on its way here, not another
                # vault's ring. Everything older was verified above (rows are in order).
                raise KeyRingBehind(
                    f"{source} lacks key version {version}, which the vault recorded: a"
                    " rotation the key file has not delivered yet"
                )
            if info is None:
                raise _mismatch(source, f"it lacks key version {version}, which the vault recorded")
            if info.state is KeyState.RETIRED:
                continue
            if not self._matches(version, value, source):
                raise _mismatch(
                    source, f"its key version {version} is not the one the vault recorded"
                )
        live = [v for v, info in sorted(infos.items()) if info.state is not KeyState.RETIRED]
        missing = [v for v in live if v not in rows]
        for version in missing:
            await self._prove_version(version, source)
        now = iso(utcnow())
        if INDEX_CHECK not in rows:
            stored = await self.backend.add_key_check(INDEX_CHECK, index_value, now)
            if not hmac.compare_digest(stored, index_value):
                raise _mismatch(source, "its index key is not the one the vault recorded")
        for version in missing:
            stored = await self.backend.add_key_check(version, self.keys.check_value(version), now)
            if not self._matches(version, stored, source):
                raise _mismatch(
                    source, f"its key version {version} is not the one the vault recorded"
                )
        if missing or INDEX_CHECK not in rows:
            rows = await self.backend.key_checks()
        self._key_check_seen = self._seen(rows)

    async def forget_key_check(self, version: int) -> None:
        """Drop the recorded check value of a version just retired."""
        await self.backend.delete_key_check(version)
        self._key_check_seen = None

    def _matches(self, version: int, value: bytes, source: str) -> bool:
        try:
            return self.keys.matches_check(version, value)
        except KeyRingMismatch:
            raise
        except KeyRingError as exc:
            # Undecidable (a key service unreachable or refusing): still no start, but say so.
            raise KeyRingError(f"{source}: {exc}") from None

    def _seen(self, rows: dict[int, bytes]) -> _Seen:
        versions = tuple((info.version, info.state.value) for info in self.keys.versions())
        return versions, frozenset(rows.items())

    async def _prove_index_key(self, source: str) -> None:
        """Before recording an index key: it must verify what the vault already holds."""
        events = await self.backend.read_audit(after_seq=0, limit=1)
        if events:
            event = events[0]
            made = link_hash(audit_key(self.keys.index_key), event.prev_hash, event.entry)
            if not hmac.compare_digest(made, event.hash):
                raise _mismatch(source, "its index key does not verify the vault's audit trail")
            return
        sample = await self.backend.customer_record_sample()
        if sample is None:
            return
        try:
            record = await self._open_row(sample)
        except DecryptionFailed:
            raise _mismatch(source, "it cannot open the vault's records") from None
        ref = record.customer_ref
        if ref is None or not hmac.compare_digest(
            self.index("customer", ref), sample.customer_idx or ""
        ):
            raise _mismatch(source, "its index key does not find the vault's customers")

    async def _prove_version(self, version: int, source: str) -> None:
        """Before recording a KEK version: it must unwrap a data key it claims, if any."""
        row = await self.backend.dek_on_version(version)
        if row is None:
            return
        try:
            self.keys.unwrap(version, row.wrapped, dek_aad(row.dek_id, version))
        except DecryptionFailed:
            raise _mismatch(
                source, f"its key version {version} cannot open the vault's data keys"
            ) from None


def _mismatch(source: str, problem: str) -> KeyRingMismatch:
    return KeyRingMismatch(
        f"{source} does not belong to this vault: {problem}; use the vault's own key ring"
    )
