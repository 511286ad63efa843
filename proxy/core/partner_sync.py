"""Partner events applied to the vault: tokens follow what the partner did to their methods.

A verified partner event (:mod:`proxy.partners.stripe_events`) names a payment method or
a partner customer. The records holding it are changed in place, same token:

* a card updated at the partner (reissued, the card account updater): brand, last four,
  masked number and expiry;
* a payment method detached, or its partner customer deleted: ``detached_at`` is set
  and resolve answers 410 ``token_detached``;
* a SEPA mandate gone inactive: ``mandate_status`` becomes ``inactive`` and resolve
  answers 410 ``mandate_revoked``.

Exactly once: the event id is stored in the same transaction as the changes, and a
redelivery answers what the first delivery did. In order: a record remembers the
``created`` time of the newest event applied to it, and an older event leaves it alone.
Each change is audited before it is applied (fail closed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import structlog

from proxy.core.audit import append_or_refuse, recordable
from proxy.core.services import Services, ensure_vault_up, vault_call
from proxy.domain.errors import ProxyError, ServiceUnavailable
from proxy.partners.ports import PartnerEvent
from proxy.partners.resilience import new_partner_key
from vault import Kind, Record, iso, new_token
from vault import partner_sync as sync
from vault.audit import Outcome

_log = structlog.get_logger("tokenproxy.partner_sync")
_service_log = structlog.get_logger("tokenproxy.service")
Created = TypeVar("Created")
_APPLY_ATTEMPTS = 3
_AUDIT_TYPES: Final = {
    "updated": "token.partner_update",
    "detached": "token.partner_detach",
    "customer_deleted": "token.partner_detach",
    "mandate_inactive": "token.mandate_revoke",
}


def _masked(old: str | None, last4: str) -> str | None:
    """The masked number with a new last four (a reissued card keeps its first six)."""
    if not old or len(old) < 10:  # six shown, at least one starred, four shown
        return None
    return old[:-4] + last4


def new_details(record: Record, event: PartnerEvent) -> dict[str, Any]:
    """The record's details after ``event`` (equal to the old ones when it changes nothing)."""
    details = dict(record.details)
    if event.action == "updated" and event.card is not None and record.kind is Kind.CARD:
        card = event.card
        for name, value in (
            ("brand", card.brand),
            ("last4", card.last4),
            ("exp_month", card.exp_month),
            ("exp_year", card.exp_year),
        ):
            if value is not None:
                details[name] = value
        if card.last4 is not None and (masked := _masked(details.get("masked"), card.last4)):
            details["masked"] = masked
    elif event.action in ("detached", "customer_deleted"):
        details.setdefault("detached_at", iso_from_unix(event.created))
    elif event.action == "mandate_inactive" and record.kind is Kind.BANK:
        details["mandate_status"] = "inactive"
    return details


def iso_from_unix(seconds: int) -> str:
    """A partner's Unix time in the API's timestamp format."""
    return iso(datetime.fromtimestamp(seconds, UTC))


async def _targets(services: Services, event: PartnerEvent) -> list[sync.Synced]:
    vault, partner = services.vault, services.partner.name
    found: list[sync.Synced] = []
    if event.action == "customer_deleted" and event.customer:
        found = await vault_call(
            services, "sync_find", sync.by_partner_customer(vault, partner, event.customer)
        )
    elif event.payment_method and event.action != "ignored":
        found = await vault_call(
            services, "sync_find", sync.by_reference(vault, partner, event.payment_method)
        )
    return found


async def _plan(services: Services, event: PartnerEvent) -> tuple[str, list[sync.Change]]:
    """What the event would change, and the outcome that says so."""
    if event.action == "ignored":
        return "ignored", []
    targets = await _targets(services, event)
    if not targets:
        return "unknown_payment_method", []
    changes, stale = [], 0
    for target in targets:
        if target.event_at is not None and event.created < target.event_at:
            stale += 1  # a newer change is already applied: this delivery came late
            continue
        details = new_details(target.record, event)
        if details == target.record.details and target.event_at == event.created:
            continue
        # Even an event that changes no field moves the record's event time forward:
        # the partner's state as of this event is the newest known, and an older event
        # delivered after it must not overwrite it.
        changes.append(sync.Change(target, details, event.created))
    if any(_changed_fields(change) for change in changes):
        return "applied", changes
    if changes:
        return "unchanged", changes
    return ("stale" if stale else "unchanged"), []


def _changed_fields(change: sync.Change) -> list[str]:
    """The names of the details a change sets to another value."""
    before = change.synced.record.details
    return sorted(
        name
        for name in set(change.details) | set(before)
        if change.details.get(name) != before.get(name)
    )


async def _audit(services: Services, event: PartnerEvent, change: sync.Change) -> None:
    changed = _changed_fields(change)
    if not changed:
        return  # only the event time moves: nothing of the token changed
    await append_or_refuse(
        services.vault,
        services.metrics,
        _AUDIT_TYPES[event.action],
        outcome=Outcome.SUCCESS,
        # The partner is the actor: its signed event is the authority for the change.
        actor="partner:" + services.partner.name,
        origin=None,
        resource=change.synced.record.token,
        detail={
            "event": recordable(services.vault, "event", event.id),
            "event_type": event.type,
            "fields": changed,
        },
    )


def receipt(event: PartnerEvent, outcome: str, *, replayed: bool) -> dict[str, Any]:
    """The answer to the partner: what became of the event."""
    return {
        "object": "partner_event",
        "id": event.id,
        "type": event.type,
        "outcome": outcome,
        "replayed": replayed,
    }


async def receive_event(services: Services, event: PartnerEvent) -> Mapping[str, Any]:
    """Apply a verified partner event once; a redelivery answers the first outcome."""
    metrics = services.metrics.sync
    # One delivery of an event at a time in this process; across replicas the stored
    # event id settles it (the second transaction finds it and changes nothing).
    async with services.locks.hold("partner-event:" + event.id):
        for _ in range(_APPLY_ATTEMPTS):
            seen = await vault_call(
                services, "sync_event", sync.event_outcome(services.vault, event.id)
            )
            if seen is not None:
                services.metrics.child(metrics.events, event.type, "replayed").inc()
                return receipt(event, seen, replayed=True)
            outcome, changes = await _plan(services, event)
            for change in changes:
                await _audit(services, event, change)
            applied = await vault_call(
                services,
                "sync_apply",
                sync.apply_event(
                    services.vault,
                    sync.event_row(event.id, event.type, event.created, outcome),
                    changes,
                ),
            )
            if applied == "conflict":
                continue  # a record changed between read and write: plan again
            if applied == "duplicate":
                seen = await vault_call(
                    services, "sync_event", sync.event_outcome(services.vault, event.id)
                )
                services.metrics.child(metrics.events, event.type, "replayed").inc()
                return receipt(event, seen or outcome, replayed=True)
            services.metrics.child(metrics.events, event.type, outcome).inc()
            _log.info("partner_event", event_type=event.type, outcome=outcome, changed=len(changes))
            return receipt(event, outcome, replayed=False)
    raise ServiceUnavailable("The vault kept changing under the event; retry.")


async def write_outbox(services: Services, partner_key: str, kind: Kind, token: str) -> None:
    """Record, before the partner creates a payment method, its key and the token to come.

    Fails (503) like any vault write: nothing has reached the partner yet.
    """
    await vault_call(
        services,
        "sync_outbox",
        sync.outbox_add(services.vault, partner_key, services.partner.name, kind, token),
    )


async def note_orphan(services: Services, partner_key: str, reference: str) -> None:
    """Best effort: note on the outbox row the payment method whose record was not stored."""
    try:
        await vault_call(
            services,
            "sync_outbox",
            sync.outbox_note_reference(services.vault, partner_key, reference),
        )
    except ServiceUnavailable:
        _log.warning("partner_orphan_not_noted", partner_idempotency_key=partner_key)


async def settle_outbox_if_final(services: Services, partner_key: str, exc: ProxyError) -> None:
    """Forget the outbox row of a request that ended in a final answer (a decline, a refusal).

    A final 4xx means no payment method is left to the vault to find (the partner
    refused it, or a setup that needs the shopper keeps it). A timeout or 5xx leaves the
    row: the partner may hold the payment method, and reconciliation settles it.
    """
    if not exc.final:
        return
    try:
        await vault_call(services, "sync_outbox", sync.outbox_settle(services.vault, partner_key))
    except ServiceUnavailable:
        _log.warning("partner_outbox_not_settled", partner_idempotency_key=partner_key)


async def create_through_outbox(
    services: Services,
    kind: Kind,
    *,
    create: Callable[[str, str], Awaitable[Created]],
    store: Callable[[Created, str, str], Awaitable[Record]],
    reference: Callable[[Created], str],
) -> Record:
    """Create a payment method at the partner and store it, with an outbox row around it.

    ``create(partner_key, token)`` makes the partner call; ``store(created, token,
    partner_key)`` seals its answer (and settles the outbox row with the record);
    ``reference(created)`` is the partner's id for it. The outbox row, written before
    the call, is what lets reconciliation find a payment method whose record was never
    stored: the client sent no Idempotency-Key, so no retry of theirs can. The per-request
    partner key still keeps the proxy's own retries from creating a second one.
    """
    partner_key = new_partner_key()
    token = new_token(kind)
    await ensure_vault_up(services)
    await write_outbox(services, partner_key, kind, token)
    try:
        created = await create(partner_key, token)
    except ProxyError as exc:
        await settle_outbox_if_final(services, partner_key, exc)
        raise
    try:
        return await store(created, token, partner_key)
    except ServiceUnavailable:
        # The partner holds a payment method we could not link. The partner key is
        # logged as well as kept on the outbox row: the partner's request log is
        # searchable by it.
        services.metrics.partner_orphans.labels(services.partner.name).inc()
        _service_log.error("partner_reference_orphaned", partner_idempotency_key=partner_key)
        await note_orphan(services, partner_key, reference(created))
        raise
    except ProxyError as exc:
        await settle_outbox_if_final(services, partner_key, exc)
        raise
