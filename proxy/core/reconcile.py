"""Reconciliation: prove that partner and vault agree, and with ``fix`` make them.

For every partner customer the vault maps (or one, by customer_ref), the partner's
payment methods are listed and compared with the vault's tokens:

* an *orphan* is a payment method attached at the partner that no token holds (a vault
  write that failed after the partner answered); ``fix`` detaches it;
* a *dangling* token holds a payment method the partner no longer has, or has detached;
  ``fix`` marks the token detached (resolve then answers 410);
* a *mismatch* is a field the two disagree on (last four, expiry): reported only, as the
  partner's webhook events are what update a record.

The outbox (:func:`vault.partner_sync.outbox_add`) finds orphans that belong to no
customer: a row whose token never arrived names a payment method the vault lost.

Each finding is one dict (a JSON line for the CLI), each fix is audited before it is
made, partner calls are paced to ``rate`` per second, and a full run keeps its cursor in
the vault after each customer so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, TypeVar

from proxy.core.audit import append_or_refuse, recordable
from proxy.core.partner_sync import iso_from_unix
from proxy.core.services import Services, partner_call, vault_call
from proxy.domain.errors import NotFound, PartnerError
from proxy.partners.ports import PartnerPaymentMethod
from vault import Kind, iso, utcnow
from vault import partner_sync as sync
from vault.audit import Outcome

T = TypeVar("T")

CURSOR: Final = sync.RECONCILE_CURSOR
LAST_RUN: Final = sync.RECONCILE_LAST
FINDINGS: Final = ("orphan", "dangling", "mismatch")
# Payment method types listed per customer (Stripe's words).
PARTNER_KINDS: Final = ("card", "sepa_debit")
# An outbox row younger than this may belong to a request still running.
OUTBOX_GRACE: Final = timedelta(minutes=15)
# Partner event ids kept to recognise redeliveries: Stripe retries for up to 3 days.
EVENTS_KEPT: Final = timedelta(days=30)
_PAGE = 100
_COMPARED: Final = ("last4", "exp_month", "exp_year")

Emit = Callable[[dict[str, Any]], None]
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Options:
    """What to reconcile and how."""

    actor: str
    origin: str | None = None
    customer_ref: str | None = None
    fix: bool = False
    rate: float = 10.0  # partner calls per second
    kinds: tuple[str, ...] = PARTNER_KINDS
    outbox_grace: timedelta = OUTBOX_GRACE


@dataclass(slots=True)
class Tally:
    """Findings and fixes so far (kept with the cursor, so a resumed run adds up)."""

    customers: int = 0
    found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINDINGS, 0))
    fixed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINDINGS, 0))
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The tally as stored and printed."""
        return {
            "customers": self.customers,
            "found": dict(self.found),
            "fixed": dict(self.fixed),
            "errors": self.errors,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        """A stored tally."""
        return cls(
            customers=int(data.get("customers", 0)),
            found={k: int(data.get("found", {}).get(k, 0)) for k in FINDINGS},
            fixed={k: int(data.get("fixed", {}).get(k, 0)) for k in FINDINGS},
            errors=int(data.get("errors", 0)),
        )


class Pacer:
    """At most ``rate`` partner calls per second, evenly spaced (no bursts toward the partner)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        """Sleep until the next call may go."""
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(now, self._next) + self._interval


@dataclass(slots=True)
class _Run:
    services: Services
    options: Options
    emit: Emit
    pacer: Pacer
    tally: Tally

    async def partner(self, operation: str, call: Awaitable[T]) -> T:
        # The coroutine starts only when awaited, after the pacer's wait.
        await self.pacer.wait()
        return await partner_call(self.services, operation, call)

    def report(self, finding: str, fixed: bool, **fields: Any) -> None:
        self.tally.found[finding] += 1
        if fixed:
            self.tally.fixed[finding] += 1
        self.emit({"finding": finding, **fields, "fixed": fixed})

    async def audit(self, event_type: str, resource: str, detail: dict[str, Any]) -> None:
        await append_or_refuse(
            self.services.vault,
            self.services.metrics,
            event_type,
            outcome=Outcome.SUCCESS,
            actor=self.options.actor,
            origin=self.options.origin,
            resource=resource,
            detail=detail,
        )

    async def detach_orphan(self, reference: str, **fields: Any) -> None:
        fixed = False
        if self.options.fix:
            digest = self.services.vault.audit.digest("payment_method", reference)
            await self.audit("reconcile.orphan_detach", digest, {"payment_method": digest})
            await self.partner("detach", self.services.partner.detach(reference))
            fixed = True
        self.report("orphan", fixed, payment_method=reference, **fields)

    async def unresolved(self, partner_key: str) -> None:
        """An outbox row whose call may have created a payment method nobody knows the id of.

        The partner's request log finds the object by this key. Nothing can be detached
        without its id; with ``fix`` the row is dropped once reported and audited, so the
        report is made once.
        """
        if self.options.fix:
            # A hex key from an earlier version may hold a card-number-like digit run.
            named = recordable(self.services.vault, "partner_key", partner_key)
            await self.audit("reconcile.outbox_unresolved", named, {"partner_key": named})
        self.report("orphan", False, partner_key=partner_key, payment_method=None)

    async def mark_dangling(self, target: sync.Synced, reason: str, customer: str) -> None:
        record = target.record
        fixed = False
        if self.options.fix:
            await self.audit("reconcile.dangling_detach", record.token, {"reason": reason})
            now = int(time.time())
            details = {**record.details, "detached_at": iso_from_unix(now)}
            change = sync.Change(target, details, max(now, target.event_at or 0))
            event = sync.event_row(
                "reconcile_" + secrets.token_urlsafe(12), "reconcile.dangling", now, "applied"
            )
            outcome = await vault_call(
                self.services,
                "sync_apply",
                sync.apply_event(self.services.vault, event, [change]),
            )
            fixed = outcome == "applied"
        self.report(
            "dangling",
            fixed,
            token=record.token,
            payment_method=record.partner_reference,
            partner_customer=customer,
            reason=reason,
        )

    async def customer(self, customer: str) -> None:
        """Compare one partner customer's payment methods with the vault's tokens."""
        services = self.services
        targets = await vault_call(
            services,
            "sync_find",
            sync.by_partner_customer(services.vault, services.partner.name, customer),
        )
        listed: dict[str, PartnerPaymentMethod] = {}
        for kind in self.options.kinds:
            try:
                methods = await self.partner(
                    "list_payment_methods",
                    services.partner.list_payment_methods(customer, kind=kind),
                )
            except PartnerError as exc:
                self.tally.errors += 1
                self.emit({"error": exc.code, "partner_customer": customer, "type": kind})
                continue
            listed.update((method.reference, method) for method in methods)
        held = {t.record.partner_reference for t in targets}
        for reference in sorted(set(listed) - held):
            await self.detach_orphan(reference, partner_customer=customer)
        for target in targets:
            await self.token(target, customer, listed)
        self.tally.customers += 1

    async def token(
        self, target: sync.Synced, customer: str, listed: dict[str, PartnerPaymentMethod]
    ) -> None:
        record = target.record
        if record.details.get("detached_at") or record.partner_reference is None:
            return
        method = listed.get(record.partner_reference)
        if method is None:
            reference = record.partner_reference
            method = await self.partner(
                "get_payment_method",
                self.services.partner.get_payment_method(reference),
            )
        if method is None:
            await self.mark_dangling(target, "missing", customer)
            return
        if method.customer != customer:
            await self.mark_dangling(target, "detached", customer)
            return
        if record.kind is not Kind.CARD:
            return
        for name in _COMPARED:
            partner_value = getattr(method, name)
            vault_value = record.details.get(name)
            if (
                partner_value is not None
                and vault_value is not None
                and partner_value != vault_value
            ):
                self.report(
                    "mismatch",
                    False,
                    token=record.token,
                    field=name,
                    vault=vault_value,
                    partner=partner_value,
                )

    async def outbox(self) -> None:
        """Settle outbox rows old enough that their request has ended."""
        services, backend = self.services, sync.sync_backend(self.services.vault)
        before = iso(utcnow() - self.options.outbox_grace)
        after = ""
        while rows := await vault_call(
            services,
            "sync_outbox",
            backend.sync_outbox_page(before=before, after=after, limit=_PAGE),
        ):
            after = rows[-1].partner_key
            present = await vault_call(
                services, "sync_outbox", backend.sync_tokens_present([r.token for r in rows])
            )
            done = [r.partner_key for r in rows if r.token in present]
            for row in rows:
                if row.token in present:
                    continue
                if row.reference is None:
                    await self.unresolved(row.partner_key)
                elif await vault_call(
                    services,
                    "sync_find",
                    sync.by_reference(services.vault, row.partner, row.reference),
                ):
                    # Another token holds it (a retry that succeeded): no orphan.
                    done.append(row.partner_key)
                    continue
                else:
                    await self.detach_orphan(row.reference, partner_key=row.partner_key)
                if self.options.fix:
                    done.append(row.partner_key)
            await vault_call(services, "sync_outbox", backend.sync_outbox_delete(done))


async def reconcile(
    services: Services, options: Options, *, emit: Emit, progress: Progress | None = None
) -> dict[str, Any]:
    """Run reconciliation; returns the summary (also stored for the metrics on a full run)."""
    vault = services.vault
    backend = sync.sync_backend(vault)
    await vault_call(services, "sync_link", sync.link_unlinked(vault))
    run = _Run(services, options, emit, Pacer(options.rate), Tally())
    if options.customer_ref is not None:
        mapping = await vault_call(
            services, "get_customer", vault.get_partner_customer(options.customer_ref)
        )
        if mapping is None or mapping.partner != services.partner.name:
            raise NotFound("The vault maps no partner customer to this customer_ref.")
        await run.customer(mapping.reference)
        return {"summary": run.tally.as_dict(), "complete": False}
    stored = await vault_call(services, "sync_state", backend.sync_state_get(CURSOR))
    after = ""
    if stored is not None:
        state = json.loads(stored)
        after, run.tally = state["after"], Tally.from_dict(state["tally"])
        emit({"resumed_after_customers": run.tally.customers})
    while page := await vault_call(
        services, "sync_customers", sync.partner_customers(vault, after=after, limit=_PAGE)
    ):
        for customer_idx, mapping in page:
            if mapping.partner == services.partner.name:
                await run.customer(mapping.reference)
            after = customer_idx
            cursor = json.dumps({"after": after, "tally": run.tally.as_dict()})
            await vault_call(
                services, "sync_state", backend.sync_state_put(CURSOR, cursor, iso(utcnow()))
            )
            if progress is not None:
                progress(run.tally.customers)
    await run.outbox()
    forgotten = await vault_call(services, "sync_events", sync.forget_events(vault, EVENTS_KEPT))
    summary = {
        **run.tally.as_dict(),
        "finished_at": int(time.time()),
        "fix": options.fix,
        "events_forgotten": forgotten,
    }
    now = iso(utcnow())
    await vault_call(
        services, "sync_state", backend.sync_state_put(LAST_RUN, json.dumps(summary), now)
    )
    await vault_call(services, "sync_state", backend.sync_state_put(CURSOR, None, now))
    return {"summary": summary, "complete": True}


async def last_run(services: Services) -> dict[str, Any] | None:
    """The summary of the last complete run, or None."""
    stored = await sync.sync_backend(services.vault).sync_state_get(LAST_RUN)
    return json.loads(stored) if stored else None
