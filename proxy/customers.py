"""Customers: partner customer mapping, attaching payment methods, listing, access
reports, erasure and single-token deletion.

Each customer_ref maps to one partner customer, created on first use and kept only
inside the vault (sealed under the customer's data key). Card and bank payment
methods are attached to it so the billing service can charge them off-session.

Concurrency: first use is serialised per customer inside a process (``Services.locks``)
and across processes by the vault's unique customer index (the loser reloads the
winner's mapping and deletes the partner customer it made). The partner call that
creates the customer carries an idempotency key derived from the customer's data key,
so a partner that honours it (Stripe) hands both racers the same customer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import structlog

from proxy.audit import append_or_refuse, resource_of
from proxy.errors import (
    InvalidRequest,
    NotFound,
    PartnerDeclined,
    PartnerError,
    ProxyError,
    ValidationFailed,
)
from proxy.service import Services, partner_call, vault_call
from proxy.validation import validate_customer_ref
from vault import (
    MAX_PAGE,
    ErasureStatus,
    Kind,
    NewRecord,
    PartnerCustomer,
    Record,
    RecordNotFound,
    iso,
    utcnow,
)
from vault.audit import EventType, Outcome
from vault.retention import BASIS

_log = structlog.get_logger("tokenproxy.customers")

# Bounded retries for partner clean-up (detach, delete): a blip should not leave an
# erasure incomplete, but a partner that stays down must not hold a request for long.
PARTNER_ATTEMPTS = 3
PARTNER_BACKOFF = 0.2  # seconds, doubled per attempt
# Refusals that a retry cannot change.
_FINAL_CODES = frozenset(
    {"partner_rejected_request", "partner_auth_failed", "partner_bad_reference"}
)
DEFAULT_PAGE = 20

# What the partner keeps in place of what we do not store (the access report says so).
PARTNER_HOLDS = {
    Kind.CARD: "the full card number, expiry date and any cardholder name given",
    Kind.BANK: "the full IBAN, the account holder's name and, if one was given, an email",
}


async def _with_retries(services: Services, operation: str, make: Any) -> Any:
    """Call ``make()`` (a fresh coroutine per attempt) up to PARTNER_ATTEMPTS times."""
    delay = PARTNER_BACKOFF
    for attempt in range(1, PARTNER_ATTEMPTS + 1):
        try:
            return await partner_call(services, operation, make())
        except PartnerDeclined:
            raise
        except PartnerError as exc:
            if exc.code in _FINAL_CODES or attempt == PARTNER_ATTEMPTS:
                raise
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


async def _quietly(services: Services, operation: str, call: Awaitable[object]) -> None:
    """Best-effort partner clean-up: a failure is counted and logged, never raised."""
    try:
        await partner_call(services, operation, call)
    except PartnerError as exc:
        _log.warning("partner_cleanup_failed", operation=operation, error_code=exc.code)


# -- partner customers and attaching ----------------------------------------------


async def ensure_partner_customer(
    services: Services, customer_ref: str
) -> tuple[PartnerCustomer, bool]:
    """The customer's partner customer, created on first use; True when created now.

    Call with ``services.locks`` held for ``customer_ref``.
    """
    vault, partner = services.vault, services.partner
    existing = await vault_call(services, "get_customer", vault.get_partner_customer(customer_ref))
    if existing is not None:
        if existing.partner != partner.name:
            raise ProxyError(
                "The customer is mapped to another payment partner.", code="partner_mismatch"
            )
        return existing, False
    dek_id = await vault_call(services, "customer_key", vault.customer_key(customer_ref))
    # Same key for racing processes (same data key), a new one after an erasure (new key).
    idempotency_key = "tokenproxy-customer-" + vault.index("partner-customer", dek_id)[:40]
    try:
        reference = await partner_call(
            services, "create_customer", partner.create_customer(idempotency_key=idempotency_key)
        )
    except PartnerError:
        with contextlib.suppress(ProxyError):
            await vault_call(services, "drop_customer", vault.drop_customer_if_empty(customer_ref))
        raise
    stored = await vault_call(
        services, "put_customer", vault.put_partner_customer(customer_ref, partner.name, reference)
    )
    if stored.reference != reference:
        # Another process stored its mapping first; ours is an empty partner customer.
        await _quietly(services, "delete_customer", partner.delete_customer(reference))
        return stored, False
    return stored, True


async def _undo_first_use(services: Services, customer_ref: str, reference: str) -> None:
    """Remove a partner customer made by a request that then stored nothing."""
    await _quietly(services, "delete_customer", services.partner.delete_customer(reference))
    with contextlib.suppress(ProxyError):
        await vault_call(
            services, "drop_customer", services.vault.drop_customer_if_empty(customer_ref)
        )


async def store_payment_method(
    services: Services, new: NewRecord, *, token: str | None = None
) -> Record:
    """Store a card or bank record; with a customer_ref, attach it to the customer first.

    A payment method the partner refuses to attach fails the request (402) and leaves
    nothing in the vault; a partner customer created for this request is deleted again.
    ``token`` is the token an idempotent request reserved before its partner call.
    The unattached payment method stays at the partner: it belongs to no customer, can
    be neither charged off-session nor attached later without its data, and the partner
    offers no way to delete it.
    """
    vault, partner = services.vault, services.partner
    if new.customer_ref is None:
        record: Record = await vault_call(services, "put", vault.put(new, token=token))
        return record
    reference = new.partner_reference
    if reference is None:  # pragma: no cover - adapters always return one
        raise ProxyError("The payment partner returned no reference.")
    async with services.locks.hold(new.customer_ref):
        customer, created = await ensure_partner_customer(services, new.customer_ref)
        try:
            await partner_call(services, "attach", partner.attach(reference, customer.reference))
        except PartnerError:
            if created:
                await _undo_first_use(services, new.customer_ref, customer.reference)
            raise
        try:
            record = await vault_call(services, "put", vault.put(new, token=token))
        except ProxyError:
            # Not stored, so not kept attached either.
            await _quietly(services, "detach", partner.detach(reference))
            if created:
                await _undo_first_use(services, new.customer_ref, customer.reference)
            raise
        return record


# -- listing and access report -----------------------------------------------------


def _customer_ref(raw: str) -> str:
    ref = validate_customer_ref(raw)
    if ref is None:  # pragma: no cover - a path segment is never None
        raise ValidationFailed("customer_ref is required.", param="customer_ref")
    return ref


def parse_limit(raw: str | None) -> int:
    """The page size from a query string: 1-100, default 20."""
    if raw is None:
        return DEFAULT_PAGE
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidRequest(
            f"limit must be a whole number from 1 to {MAX_PAGE}.",
            code="invalid_limit",
            param="limit",
        )
    return int(raw)


def _listed(record: Record) -> dict[str, Any]:
    view = record.masked_view()
    view["last_used_at"] = iso(record.last_used_at) if record.last_used_at else None
    return view


async def list_tokens(
    services: Services, customer_ref: str, *, limit: str | None, starting_after: str | None
) -> dict[str, Any]:
    """One page of a customer's tokens (masked views), oldest first."""
    ref = _customer_ref(customer_ref)
    size = parse_limit(limit)
    try:
        page = await vault_call(
            services,
            "list",
            services.vault.list_customer(ref, limit=size, starting_after=starting_after),
        )
    except ValueError:
        raise InvalidRequest(
            "starting_after is not a cursor from this API.",
            code="invalid_cursor",
            param="starting_after",
        ) from None
    return {
        "object": "list",
        "customer_ref": ref,
        "data": [_listed(record) for record in page.records],
        "has_more": page.has_more,
        "next_cursor": page.next_cursor,
    }


async def _all_records(
    services: Services, customer_ref: str, *, include_expired: bool
) -> list[Record]:
    records: list[Record] = []
    cursor: str | None = None
    while True:
        page = await vault_call(
            services,
            "list",
            services.vault.list_customer(
                customer_ref,
                limit=MAX_PAGE,
                starting_after=cursor,
                include_expired=include_expired,
            ),
        )
        records += page.records
        if not page.has_more:
            return records
        cursor = page.next_cursor


async def export_customer(services: Services, customer_ref: str) -> dict[str, Any]:
    """The data-subject access report: everything the vault holds about a customer.

    Records past retention but not yet swept are included (flagged ``expired``): they
    are still held, and an access report lists what is held.
    """
    ref = _customer_ref(customer_ref)
    vault = services.vault
    records = await _all_records(services, ref, include_expired=True)
    customer = await vault_call(services, "get_customer", vault.get_partner_customer(ref))
    now = utcnow()
    held: list[dict[str, Any]] = []
    entries = []
    counts: dict[str, int] = {}
    for record in records:
        counts[str(record.kind)] = counts.get(str(record.kind), 0) + 1
        entry = _listed(record)
        entry["partner"] = record.partner
        entry["partner_reference"] = record.partner_reference
        entry["expired"] = vault.is_expired(record, now)
        days = vault.retention.days(record.kind)
        entry["retention"] = {
            "days": days or None,
            "counted_from": str(BASIS[record.kind]) if days else None,
        }
        entries.append(entry)
        if record.kind in PARTNER_HOLDS and record.partner_reference:
            held.append(
                {
                    "partner": record.partner,
                    "object": "payment_method",
                    "reference": record.partner_reference,
                    "token": record.token,
                    "holds": PARTNER_HOLDS[record.kind],
                }
            )
    if customer is not None:
        held.append(
            {
                "partner": customer.partner,
                "object": "customer",
                "reference": customer.reference,
                "holds": "a customer object without personal fields; the payment methods"
                " above are attached to it",
            }
        )
    return {
        "object": "customer_export",
        "customer_ref": ref,
        "generated_at": iso(now),
        "counts": counts,
        "records": entries,
        "partner_customer": None
        if customer is None
        else {
            "partner": customer.partner,
            "reference": customer.reference,
            "created_at": iso(customer.created_at),
        },
        "held_by_partner": held,
        "never_stored": "Card numbers, expiry dates, security codes, full IBANs, account"
        " holder names and emails are never stored by this service; the payment partner"
        " holds them, as listed in held_by_partner.",
    }


# -- erasure and deletion --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Remaining:
    """Something erasure had to leave, and why."""

    object: str
    reason: str
    token: str | None = None
    kind: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form in an erasure report."""
        item: dict[str, Any] = {"object": self.object, "reason": self.reason}
        if self.token is not None:
            item["token"] = self.token
            item["kind"] = self.kind
        return item


class ErasureIncomplete(PartnerError):
    """The partner could not finish its part; what the vault still holds is listed."""

    status = 502
    default_code = "erasure_incomplete"

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(
            "The erasure is incomplete: the payment partner did not confirm every step. "
            "What remains is listed; repeat the request to finish.",
        )
        self.report = report

    def body(self, request_id: str | None) -> dict[str, object]:
        """The error body, plus what was deleted and what remains."""
        body = super().body(request_id)
        error = body["error"]
        assert isinstance(error, dict)  # noqa: S101 - ProxyError.body's shape
        # Not the customer_ref: an error body echoes nothing the client sent (it knows).
        error.update({k: v for k, v in self.report.items() if k != "customer_ref"})
        return body


async def _detach(services: Services, record: Record) -> str | None:
    """Detach a record's payment method at the partner; None when done, else a reason."""
    partner = services.partner
    if record.kind not in PARTNER_HOLDS or not record.partner_reference:
        return None
    if record.partner != partner.name:
        return "partner_not_configured"
    reference = record.partner_reference
    try:
        await _with_retries(services, "detach", lambda: partner.detach(reference))
    except PartnerError as exc:
        return exc.code
    return None


async def erase_customer(services: Services, customer_ref: str) -> dict[str, Any]:
    """Erase a customer: detach at the partner, delete the partner customer, crypto-shred.

    Idempotent. Every payment method is detached and the partner customer deleted
    (each with bounded retries) before the vault deletes the customer's rows, data
    key and idempotency keys in one transaction. A record whose detach failed, and the
    mapping when the partner customer could not be deleted, are kept (with the key they
    need) so a repeated request can finish; the result lists them and raises
    ErasureIncomplete. It reports only what it saw: a repeat answers
    ``already_erased``; a customer_ref the vault holds nothing under is 404
    ``customer_not_found``; a record it cannot read fails the request (503
    ``record_unreadable``) before anything is deleted.
    """
    ref = _customer_ref(customer_ref)
    vault, partner = services.vault, services.partner
    async with services.locks.hold(ref):
        records = await _all_records(services, ref, include_expired=True)
        customer = await vault_call(services, "get_customer", vault.get_partner_customer(ref))
        remaining: list[Remaining] = []
        detached = 0
        for record in records:
            reason = await _detach(services, record)
            if reason is None:
                detached += record.kind in PARTNER_HOLDS and bool(record.partner_reference)
            else:
                remaining.append(Remaining("token", reason, record.token, str(record.kind)))
        customer_deleted = customer is None
        if customer is not None:
            cus = customer.reference
            try:
                await _with_retries(
                    services, "delete_customer", lambda: partner.delete_customer(cus)
                )
                customer_deleted = True
            except PartnerError as exc:
                remaining.append(Remaining("partner_customer", exc.code))
        erasure = await vault_call(
            services,
            "erase",
            vault.erase_customer(
                ref,
                keep=[item.token for item in remaining if item.token],
                keep_partner_customer=not customer_deleted,
            ),
        )
    if erasure.status is ErasureStatus.NOT_FOUND:
        services.metrics.erasures.labels("not_found").inc()
        raise NotFound(
            "The vault holds nothing under this customer_ref and has no erasure of it on record.",
            code="customer_not_found",
            param="customer_ref",
        )
    for kind, count in erasure.deleted.items():
        services.metrics.tokens_deleted.labels(kind, "erasure").inc(count)
    report: dict[str, Any] = {
        "customer_ref": ref,
        "deleted": erasure.deleted,
        "idempotency_keys_deleted": erasure.idempotency_keys,
        "partner": {
            "payment_methods_detached": detached,
            "customer_deleted": customer is not None and customer_deleted,
        },
        "key_shredded": erasure.key_shredded,
        "remaining": [item.as_dict() for item in remaining],
    }
    if remaining or not erasure.complete:
        services.metrics.erasures.labels("incomplete").inc()
        _log.warning("erasure_incomplete", remaining=len(remaining))
        raise ErasureIncomplete(report)
    services.metrics.erasures.labels(
        "complete" if erasure.status is ErasureStatus.ERASED else str(erasure.status)
    ).inc()
    return {"object": "customer_erasure", "status": str(erasure.status), **report}


async def delete_token(services: Services, token: str) -> dict[str, Any]:
    """Delete one token, detaching its payment method at the partner first.

    If the partner cannot detach it, nothing is deleted (the partner error is
    returned) so the request can be repeated. Expired tokens can still be deleted.
    """
    vault = services.vault
    try:
        record = await vault_call(services, "get", vault.get(token, include_expired=True))
    except RecordNotFound:
        raise NotFound("No such token.", param="token") from None
    lock = services.locks.hold(record.customer_ref) if record.customer_ref else None
    async with lock or contextlib.nullcontext():
        if record.kind in PARTNER_HOLDS and record.partner_reference:
            if record.partner != services.partner.name:
                raise PartnerError("The token's payment partner is not configured.")
            reference = record.partner_reference
            # A partner failure propagates as itself (503/504/502): nothing deleted, retry.
            await _with_retries(services, "detach", lambda: services.partner.detach(reference))
        deleted = await vault_call(services, "delete", vault.delete(token))
    if not deleted:
        raise NotFound("No such token.", param="token")
    services.metrics.tokens_deleted.labels(str(record.kind), "delete").inc()
    return {
        "object": "token_deletion",
        "token": token,
        "kind": str(record.kind),
        "deleted": True,
        "partner_detached": record.kind in PARTNER_HOLDS and bool(record.partner_reference),
    }


# -- audit (PCI DSS 10.2.2: deletions and erasures are recorded) ------------------


def customer_resource(services: Services, customer_ref: str) -> str:
    """A customer as an audit resource: its keyed blind index, never the ref itself.

    The trail outlives the erasure it records; a blind index lets an operator holding
    the key ring confirm "this customer was erased" without the trail keeping the ref.
    """
    return "customer:" + services.vault.index("customer", customer_ref)


async def _audited(
    services: Services,
    event_type: str,
    resource: str,
    *,
    actor: str,
    origin: str | None,
    call: Awaitable[dict[str, Any]],
    summary: Any,
) -> dict[str, Any]:
    """Run ``call`` and write its audit event, success or failure; 503 if it cannot be."""
    try:
        result = await call
    except ErasureIncomplete as exc:
        detail = {"error": exc.code, "remaining": len(exc.report["remaining"])}
        await append_or_refuse(
            services.vault,
            services.metrics,
            event_type,
            outcome=Outcome.FAILURE,
            actor=actor,
            origin=origin,
            resource=resource,
            detail={**detail, **summary(exc.report)},
        )
        raise
    except ProxyError as exc:
        await append_or_refuse(
            services.vault,
            services.metrics,
            event_type,
            outcome=Outcome.FAILURE,
            actor=actor,
            origin=origin,
            resource=resource,
            detail={"error": exc.code},
        )
        raise
    await append_or_refuse(
        services.vault,
        services.metrics,
        event_type,
        outcome=Outcome.SUCCESS,
        actor=actor,
        origin=origin,
        resource=resource,
        detail=summary(result),
    )
    return result


def _erasure_summary(report: dict[str, Any]) -> dict[str, int | bool]:
    summary: dict[str, int | bool] = {f"deleted_{k}": v for k, v in report["deleted"].items()}
    summary["key_shredded"] = bool(report["key_shredded"])
    summary["idempotency_keys_deleted"] = int(report.get("idempotency_keys_deleted", 0))
    summary["partner_detached"] = int(report["partner"]["payment_methods_detached"])
    return summary


async def audited_erase(
    services: Services, customer_ref: str, *, actor: str, origin: str | None
) -> dict[str, Any]:
    """Erase a customer and record it (outcome, counts; never the customer_ref)."""
    ref = _customer_ref(customer_ref)
    return await _audited(
        services,
        EventType.ERASURE,
        customer_resource(services, ref),
        actor=actor,
        origin=origin,
        call=erase_customer(services, ref),
        summary=_erasure_summary,
    )


async def audited_delete(
    services: Services, token: str, *, actor: str, origin: str | None
) -> dict[str, Any]:
    """Delete a token and record it."""
    return await _audited(
        services,
        EventType.DELETE,
        resource_of(token),
        actor=actor,
        origin=origin,
        call=delete_token(services, token),
        summary=lambda r: {"kind": r["kind"], "partner_detached": r["partner_detached"]},
    )
