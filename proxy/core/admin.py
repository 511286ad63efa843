"""Administration: the key ring, client keys, retention and the schema, as an operator runs them.

The `tokenproxy` commands parse arguments, call one function here and print what it
returns. Each function works on an :class:`Admin` session (the configured vault and key
provider, opened by :func:`session`) and records what it changed in the audit trail under
the operator's name (PCI DSS 10.2.2: user identification, type, outcome, origin).

A request the rules refuse raises :class:`Refused` with a message meant for the operator,
after the refusal itself has been recorded; vault, settings and clients-file errors
propagate as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from proxy.core.audit import recordable
from proxy.core.retention import sweep
from proxy.infra.clients import (
    PUBLISHABLE_SCOPES,
    add_client,
    parse_grace,
    parse_origins,
    parse_scopes,
    parse_time,
    read_entries,
    remove_client,
    rotate_client,
)
from proxy.infra.keys import AdminProvider, init_keys, load_provider
from proxy.infra.metrics import Metrics
from proxy.infra.settings import Settings
from proxy.infra.tls import parse_identity
from vault import Purge, Vault, VaultError
from vault.audit import EventType, Outcome
from vault.rotation import (
    KeyVersionStatus,
    RewrapProgress,
    key_status,
    retire_version,
    rewrap,
    rewrap_remaining,
)

Detail = dict[str, str | int | bool | None]


class Refused(Exception):
    """The operator asked for something the rules do not allow; the message says what."""


@dataclass(frozen=True, slots=True)
class Operator:
    """Who runs an administrative action, as the audit trail names them."""

    actor: str
    origin: str | None


@dataclass(slots=True)
class Admin:
    """An open vault and key provider, and the operator acting on them."""

    settings: Settings
    vault: Vault
    keys: AdminProvider
    operator: Operator

    async def record(
        self, event_type: str, *, ok: bool, resource: str | None, detail: Detail | None = None
    ) -> None:
        """Append an audit event by the operator; AuditUnavailable when it cannot be written."""
        await self.vault.audit.append(
            event_type,
            outcome=Outcome.SUCCESS if ok else Outcome.FAILURE,
            actor=self.operator.actor,
            origin=self.operator.origin,
            resource=resource,
            detail=detail,
        )


def ring_name(settings: Settings) -> str:
    """How messages name the configured key ring."""
    return f"key ring {settings.keyring_path}"


@asynccontextmanager
async def session(
    settings: Settings, operator: Operator, *, migrate: bool = True
) -> AsyncIterator[Admin]:
    """The configured vault and key provider for one command; the vault closes at the end.

    The key ring is checked against the vault first (``Vault.check_key_ring``): a ring
    that is not the vault's own is refused before any command reads or writes anything.
    ``migrate=False`` leaves migrations and that check to the caller.
    """
    keys = load_provider(settings)
    vault = await Vault.open(
        settings.vault_url,
        keys,
        migrate=migrate and settings.migrate_on_start,
        check_keys=migrate,
        source=ring_name(settings),
        # A command runs one statement at a time: no idle connections up front.
        pool_min=0,
        pool_max=2,
        db_timeout=settings.db_timeout,
        migrate_timeout=settings.migrate_timeout,
    )
    try:
        yield Admin(settings, vault, keys, operator)
    finally:
        await vault.close()


# -- the key ring ------------------------------------------------------------------------


async def init_key_ring(settings: Settings, operator: Operator) -> int:
    """Create the key ring (or KMS key map) and record it; returns the active version.

    Refuses (KeyRingError) to overwrite an existing one.
    """
    active = init_keys(settings)
    async with session(settings, operator) as admin:
        await admin.record(EventType.KEY_INIT, ok=True, resource=f"key_version:{active}")
    return active


@dataclass(frozen=True, slots=True)
class Rotation:
    """A new active key version, and how many wrapped keys still use older ones."""

    old: int
    new: int
    to_rewrap: int


async def rotate_keys(admin: Admin) -> Rotation:
    """Add a key version and make it active for new data keys."""
    old = admin.keys.active_version
    try:
        new = admin.keys.rotate()
        # Record the new version's check value now: servers adopt it within seconds.
        await admin.vault.check_key_ring(source=ring_name(admin.settings))
    except VaultError:
        await admin.record(EventType.KEY_ROTATE, ok=False, resource=f"key_version:{old}")
        raise
    await admin.record(
        EventType.KEY_ROTATE, ok=True, resource=f"key_version:{new}", detail={"from": old}
    )
    return Rotation(old, new, await rewrap_remaining(admin.vault))


@dataclass(frozen=True, slots=True)
class KeyReport:
    """Every key version with what it wraps, and how many keys a rewrap still has to move."""

    versions: list[KeyVersionStatus]
    to_rewrap: int


async def key_report(admin: Admin) -> KeyReport:
    """What `keys list` shows (what `keys retire` counts)."""
    versions = await key_status(admin.vault)
    to_rewrap = sum(s.in_use for s in versions if s.version != admin.keys.active_version)
    return KeyReport(versions, to_rewrap)


async def retire_key(admin: Admin, version: int) -> None:
    """Retire a key version; KeyInUse while any wrapped key still uses it."""
    resource = f"key_version:{version}"
    try:
        await retire_version(admin.vault, admin.keys, version)
    except VaultError:
        await admin.record(EventType.KEY_RETIRE, ok=False, resource=resource)
        raise
    await admin.record(EventType.KEY_RETIRE, ok=True, resource=resource)


async def rewrap_keys(
    admin: Admin, *, batch_size: int, on_batch: Callable[[RewrapProgress], None]
) -> RewrapProgress:
    """Re-wrap every data key on an older version with the active one; resumable.

    The run is recorded as a failure when any key could not be unwrapped.
    """
    try:
        progress = await rewrap(admin.vault, batch_size=batch_size, on_batch=on_batch)
    except VaultError:
        await admin.record(EventType.KEY_REWRAP, ok=False, resource=None)
        raise
    await admin.record(
        EventType.KEY_REWRAP,
        ok=progress.failed == 0,
        resource=f"key_version:{progress.target_version}",
        detail={"rewrapped": progress.rewrapped, "failed": progress.failed},
    )
    return progress


# -- client keys -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewClient:
    """A client to add, as the operator described it (checked by :func:`add`)."""

    name: str
    scopes: str | None = None
    publishable: bool = False
    origins: str | None = None
    # The client certificate its key must come with: CN=billing, DNS:billing.svc, ...
    cert_subject: str | None = None


@dataclass(frozen=True, slots=True)
class AddedClient:
    """A client just added; ``key`` is shown once and stored only as its digest."""

    name: str
    key: str
    scopes: frozenset[str]
    publishable: bool
    origins: frozenset[str]
    # Origins of a publishable client that TOKENPROXY_CORS_ORIGINS does not list yet.
    origins_missing_from_cors: frozenset[str]
    cert_identity: str | None = None


def _added(admin: Admin, new: NewClient) -> AddedClient:
    """Check ``new`` against the client rules and add it; ValueError when refused."""
    path = admin.settings.clients_path
    if new.publishable:
        if new.scopes not in (None, "tokenize"):
            raise ValueError("a publishable client holds only the tokenize scope")
        if not new.origins:
            raise ValueError("a publishable client needs --origins https://shop.example[,...]")
        if new.cert_subject is not None:
            raise ValueError("a publishable client cannot be bound to a client certificate")
        origins = parse_origins(new.origins)
        key = add_client(path, new.name, PUBLISHABLE_SCOPES, publishable=True, origins=origins)
        missing = origins - set(admin.settings.cors_origins)
        return AddedClient(new.name, key, PUBLISHABLE_SCOPES, True, origins, missing)
    if new.scopes is None:
        raise ValueError("--scopes is required (e.g. --scopes resolve)")
    if new.origins:
        raise ValueError("--origins applies to publishable clients only (add --publishable)")
    scopes = parse_scopes(new.scopes)
    identity = parse_identity(new.cert_subject) if new.cert_subject is not None else None
    key = add_client(path, new.name, scopes, cert_identity=identity)
    return AddedClient(new.name, key, scopes, False, frozenset(), frozenset(), identity)


async def add(admin: Admin, new: NewClient) -> AddedClient:
    """Add a client and record it; Refused (recorded too) when the rules refuse it."""
    try:
        added = _added(admin, new)
    except ValueError as exc:
        # A refused name may be anything typed, a card number even: only its digest.
        refused = admin.vault.audit.digest("client", new.name)
        await admin.record(EventType.CLIENT_ADD, ok=False, resource=refused)
        raise Refused(str(exc)) from None
    detail: Detail = {"scopes": ",".join(sorted(added.scopes)), "publishable": added.publishable}
    if added.cert_identity is not None:
        # The certificate's issuer chose it: a device serial or an IPv6 SAN may pass for
        # a card number, and the client is already added.
        detail["cert_subject"] = recordable(admin.vault, "cert_subject", added.cert_identity)
    await admin.record(
        EventType.CLIENT_ADD, ok=True, resource=f"client:{added.name}", detail=detail
    )
    return added


def _client_resource(admin: Admin, name: str) -> str:
    """A client named on the command line as an audit resource.

    The name need not be a client's (only those are checked when added) and may be
    anything typed, a card number even: then only its digest, as a refused `add` records.
    """
    named = recordable(admin.vault, "client", name)
    return f"client:{name}"[:200] if named == name else named


async def remove(admin: Admin, name: str) -> None:
    """Remove a client and all its keys, and record it; Refused when there is no such client."""
    resource = _client_resource(admin, name)
    try:
        remove_client(admin.settings.clients_path, name)
    except ValueError as exc:
        await admin.record(EventType.CLIENT_REMOVE, ok=False, resource=resource)
        raise Refused(str(exc)) from None
    await admin.record(EventType.CLIENT_REMOVE, ok=True, resource=resource)


@dataclass(frozen=True, slots=True)
class RotatedClient:
    """A client's new key (shown once) and until when its old key is accepted."""

    key: str
    old_valid_until: datetime
    old_key_works: bool


async def rotate(
    admin: Admin, name: str, *, old_valid_until: str | None = None, grace: str = "24h"
) -> RotatedClient:
    """Give a client a new key; its old key works until ``old_valid_until`` (an ISO time)
    or for ``grace`` (90s, 30m, 24h, 7d; 0 ends it now). Refused (recorded) when bad."""
    resource = _client_resource(admin, name)
    try:
        if old_valid_until is not None:
            until = parse_time(old_valid_until)
        else:
            until = datetime.now(UTC) + parse_grace(grace)
        key = rotate_client(admin.settings.clients_path, name, old_valid_until=until)
    except ValueError as exc:
        await admin.record(EventType.CLIENT_ROTATE, ok=False, resource=resource)
        raise Refused(str(exc)) from None
    stamp = until.astimezone(UTC).isoformat(timespec="seconds")
    await admin.record(
        EventType.CLIENT_ROTATE, ok=True, resource=resource, detail={"old_valid_until": stamp}
    )
    return RotatedClient(key, until, until > datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class ClientSummary:
    """One client as `clients list` shows it: never a key or a key digest."""

    name: str
    publishable: bool
    scopes: frozenset[str]
    created_at: str | None
    # When each previous key that still works stops working, soonest first.
    previous_keys_until: list[datetime]
    cert_identity: str | None = None


def list_clients(settings: Settings) -> list[ClientSummary]:
    """Every client in the clients file, in file order."""
    now = datetime.now(UTC)
    return [
        ClientSummary(
            entry.client.name,
            entry.client.publishable,
            entry.client.scopes,
            entry.created_at,
            sorted(p.valid_until for p in entry.previous if p.valid_until > now),
            entry.client.cert_identity,
        )
        for entry in read_entries(settings.clients_path)
    ]


# -- schema and retention ----------------------------------------------------------------


async def migrate(admin: Admin) -> int:
    """Apply pending schema migrations, then check the key ring; returns the schema version.

    Run on a session opened with ``migrate=False``: the check needs the schema, and a
    vault older than its table gets it here first.
    """
    version = await admin.vault.backend.migrate(statement_timeout=admin.settings.migrate_timeout)
    await admin.vault.check_key_ring(source=ring_name(admin.settings))
    return version


async def purge(admin: Admin, metrics: Metrics, *, dry_run: bool) -> Purge:
    """Delete (or with ``dry_run`` count) every token and audit event past retention.

    Counts per kind, also added to ``metrics`` on a real run, and the deleted payment
    methods that stay attached at the partner. The run is recorded under the operator's
    name and fails (AuditUnavailable) when that record cannot be written.
    """
    admin.vault.retention = admin.settings.retention_policy()
    return await sweep(
        admin.vault,
        metrics,
        dry_run=dry_run,
        audit_retention_days=admin.settings.audit_retention_days,
        actor=admin.operator.actor,
        origin=admin.operator.origin,
    )
