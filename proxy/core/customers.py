"""Customers: partner customer mapping, attaching payment methods, listing, access
reports, erasure and single-token deletion.

Each customer_ref maps to one partner customer, created on first use and kept only
inside the vault (sealed under the customer's data key). Card and bank payment
methods are saved on it through the partner's off-session setup so the billing
service can charge them off-session.

Concurrency: first use is serialised per customer inside a process (``Services.locks``)
and across processes by the vault's unique customer index (the loser reloads the
winner's mapping and deletes the partner customer it made). The partner call that
creates the customer carries an idempotency key derived from the customer's data key,
so a partner that honours it (Stripe) hands both racers the same customer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any

import msgspec
import structlog

from proxy.core.audit import append_or_refuse, recordable, resource_of
from proxy.core.services import Services, partner_call, vault_call
from proxy.core.views import listed_view, reusable
from proxy.domain.bank import MandateAcceptance
from proxy.domain.errors import (
    AuthenticationRequired,
    Conflict,
    InvalidRequest,
    NotFound,
    PartnerDeclined,
    PartnerError,
    ProxyError,
    TokenGone,
    ValidationFailed,
)
from proxy.domain.fields import validate_customer_ref
from proxy.domain.schemas import (
    CustomerExport,
    Erasure,
    ErasurePreview,
    TokenDeletion,
    TokenList,
)
from proxy.partners.ports import PartnerSetup
from vault import (
    MAX_PAGE,
    ErasureStatus,
    Kind,
    NewRecord,
    PartnerCustomer,
    Record,
    RecordNotFound,
    VaultError,
    iso,
    new_token,
    utcnow,
)
from vault import partner_sync as sync
from vault.audit import EventType, Outcome
from vault.retention import BASIS

_log = structlog.get_logger("tokenproxy.customers")

DEFAULT_PAGE = 20

# What the partner keeps in place of what we do not store (the access report says so).
PARTNER_HOLDS = {
    Kind.CARD: "the full card number, expiry date and any cardholder name given",
    Kind.BANK: "the full IBAN, the account holder's name and, if one was given, an email",
}
_INVOICE_HOLDS = "the invoice this token's reference names, as the partner issued it"


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


async def _saved_twin(services: Services, new: NewRecord, customer: str) -> Record | None:
    """The customer's token for the same card (partner fingerprint and expiry), if any."""
    vault, partner = services.vault, services.partner
    wanted = new.fingerprint_idx or (
        vault.fingerprint_index(new.kind, new.fingerprint) if new.fingerprint else None
    )
    if new.kind is not Kind.CARD or wanted is None:
        return None
    try:
        listed = await partner_call(
            services, "list_payment_methods", partner.list_payment_methods(customer, kind="card")
        )
    except PartnerError as exc:
        if exc.code == "partner_resource_missing":
            raise _customer_deleted() from None
        raise
    for method in listed:
        if (
            method.reference == new.partner_reference
            or method.fingerprint is None
            or vault.fingerprint_index(Kind.CARD, method.fingerprint) != wanted
            or (method.exp_month, method.exp_year)
            != (new.details.get("exp_month"), new.details.get("exp_year"))
        ):
            continue
        found = await vault_call(
            services, "sync_find", sync.by_reference(vault, partner.name, method.reference)
        )
        for synced in found:
            twin: Record = synced.record
            if twin.customer_ref == new.customer_ref and not twin.details.get("detached_at"):
                return twin
    return None


def _customer_deleted() -> Conflict:
    """The customer_ref's partner customer was deleted at the partner, not by the proxy."""
    # Re-creating it would need the mapping replaced under the customer's data key; an
    # erasure (which finds the partner customer gone and detaches nothing twice) clears
    # the mapping, and the next save creates a new partner customer.
    return Conflict(
        "The payment partner no longer has this customer's partner customer (deleted"
        " outside the proxy). Erase the customer_ref (DELETE /v1/customers/{customer_ref})"
        " to start it again.",
        code="partner_customer_deleted",
        param="customer_ref",
    )


async def _undo_first_use(services: Services, customer_ref: str, reference: str) -> None:
    """Remove a partner customer made by a request that then stored nothing."""
    await _quietly(services, "delete_customer", services.partner.delete_customer(reference))
    with contextlib.suppress(ProxyError):
        await vault_call(
            services, "drop_customer", services.vault.drop_customer_if_empty(customer_ref)
        )


@dataclass(frozen=True, slots=True)
class SaveRequest:
    """What saving a payment method for off-session charges needs beyond its record.

    ``actor`` and ``origin`` name the client and its address for the audit trail;
    ``mandate`` is the shopper's SEPA mandate acceptance; ``return_url`` is where the
    partner sends a shopper back after authenticating a card. ``outbox_key`` is the
    partner idempotency key of the outbox row the record settles (partner sync).
    """

    actor: str | None = None
    origin: str | None = None
    mandate: MandateAcceptance | None = None
    return_url: str | None = None
    outbox_key: str | None = None


# A pending card setup is handed to the checkout sealed, for this long.
PENDING_SETUP_TTL = 3600
_PENDING_PURPOSE = "card-setup\x00"


@dataclass(frozen=True, slots=True)
class PendingSetup:
    """A card awaiting its holder's authentication: what its record will be, and where."""

    new: NewRecord
    intent: str
    customer: str
    # The token the partner's objects name (metadata.vault_token); None for a setup
    # sealed before the token was kept in it.
    token: str | None = None


def seal_pending(
    services: Services,
    new: NewRecord,
    setup: PartnerSetup,
    customer: str,
    client: str | None,
    *,
    token: str | None = None,
) -> str:
    """The opaque ``setup`` a checkout brings back to confirm a card after authentication.

    Sealed by the vault (AES-GCM, bound to the client that made it), so the checkout can
    neither read the masked card or partner ids in it nor forge one; it expires after
    PENDING_SETUP_TTL. Nothing is stored for it: an abandoned setup leaves no row.
    """
    payload = {
        "v": 1,
        "expires": int(time.time()) + PENDING_SETUP_TTL,
        "intent": setup.intent,
        "customer": customer,
        "kind": str(new.kind),
        "partner": new.partner,
        "reference": new.partner_reference,
        "details": new.details,
        "customer_ref": new.customer_ref,
        "metadata": new.metadata,
        "fingerprint": new.fingerprint,
        "token": token,
    }
    return services.vault.seal_note(_PENDING_PURPOSE + (client or ""), json.dumps(payload).encode())


def open_pending(services: Services, sealed: str, client: str | None) -> PendingSetup:
    """The pending setup in ``sealed``; 400 when it is not one of this client's, or expired."""
    try:
        payload = json.loads(services.vault.open_note(_PENDING_PURPOSE + (client or ""), sealed))
    except (VaultError, ValueError):
        raise InvalidRequest(
            "setup is not a pending card setup made for this client.",
            code="invalid_setup",
            param="setup",
        ) from None
    if payload.get("v") != 1 or payload["expires"] < time.time():
        raise InvalidRequest(
            "This card setup has expired; tokenize the card again.",
            code="setup_expired",
            param="setup",
        )
    new = NewRecord(
        kind=Kind(payload["kind"]),
        partner=payload["partner"],
        partner_reference=payload["reference"],
        details=payload["details"],
        customer_ref=payload["customer_ref"],
        metadata=payload["metadata"],
        fingerprint=payload["fingerprint"],
    )
    return PendingSetup(
        new=new, intent=payload["intent"], customer=payload["customer"], token=payload.get("token")
    )


# Stripe's longest idempotency key (https://docs.stripe.com/api/idempotent_requests).
MAX_PARTNER_KEY = 255


def partner_metadata(token: str) -> dict[str, str]:
    """What a partner object the proxy makes for a token carries: the token, no card data."""
    return {"vault_token": token}


def _setup_key(reference: str, token: str) -> str:
    """The partner idempotency key of the setup saving ``reference`` as ``token``."""
    key = f"tokenproxy-setup-{reference}-{token}"
    if len(key) <= MAX_PARTNER_KEY:
        return key
    # Stripe ids may grow to 255 characters; a digest keeps the key within Stripe's limit.
    return "tokenproxy-setup-" + hashlib.sha256(key.encode()).hexdigest()


# The partner's name for each kind of payment method a customer can be charged with.
PARTNER_KIND = {Kind.CARD: "card", Kind.BANK: "sepa_debit"}


async def store_payment_method(
    services: Services,
    new: NewRecord,
    *,
    token: str | None = None,
    save: SaveRequest | None = None,
) -> Record:
    """Store a card or bank record; with a customer_ref, save it on the customer first.

    Saving goes through the partner's off-session setup (a Stripe SetupIntent), which
    attaches the method to the customer, sets a card up for merchant-initiated charges
    under SCA and, for SEPA debit, creates the mandate from ``save.mandate``. The record
    keeps the partner customer (and mandate) for ``resolve``.

    A setup the partner refuses fails the request (402) and leaves nothing in the vault;
    a partner customer created for this request is deleted again. A card that needs
    its holder to authenticate raises AuthenticationRequired: nothing is stored and no
    token exists until ``proxy.core.card_setup.confirm_card_setup`` sees the setup succeed.
    ``token`` is the token an idempotent request reserved before its partner call.
    """
    vault, partner = services.vault, services.partner
    if new.customer_ref is None:
        stored: Record = await vault_call(
            services,
            "put",
            sync.put_linked(vault, new, token=token, outbox_key=save.outbox_key if save else None),
        )
        return stored
    reference = new.partner_reference
    if reference is None:  # pragma: no cover - adapters always return one
        raise ProxyError("The payment partner returned no reference.")
    save = save or SaveRequest()
    # Chosen before the setup, which names it at the partner as the method does.
    token = token or new_token(new.kind)
    async with services.locks.hold(new.customer_ref):
        customer, created = await ensure_partner_customer(services, new.customer_ref)
        if not created and (same := await _saved_twin(services, new, customer.reference)):
            # Stripe counts every saved method toward a per-customer limit: the same card
            # saved again answers the token it already has; the new method stays unsaved.
            _log.info("duplicate_card_reused", kind=str(new.kind))
            return same
        try:
            setup = await partner_call(
                services,
                "setup",
                partner.setup_off_session(
                    reference,
                    customer.reference,
                    kind=PARTNER_KIND[new.kind],
                    mandate=save.mandate,
                    return_url=save.return_url,
                    # One setup per payment method and token, however often the request
                    # is resumed (an idempotent request keeps its reserved token); a new
                    # token for the same method (an attach tried again) is a new setup,
                    # as its parameters differ.
                    idempotency_key=_setup_key(reference, token),
                    metadata=partner_metadata(token),
                ),
            )
        except PartnerError as exc:
            if created:
                await _undo_first_use(services, new.customer_ref, customer.reference)
            elif exc.code == "partner_resource_missing" and exc.partner_param == "customer":
                raise _customer_deleted() from None
            raise
        if not setup.succeeded:
            if setup.status == "requires_action" and new.kind is Kind.CARD:
                # The partner customer stays: the pending setup names it.
                raise AuthenticationRequired(
                    setup=seal_pending(
                        services, new, setup, customer.reference, save.actor, token=token
                    ),
                    next_action=setup.next_action,
                )
            if created:
                await _undo_first_use(services, new.customer_ref, customer.reference)
            raise PartnerDeclined(
                "The payment partner could not set the payment method up for later charges.",
                code="setup_failed",
            )
        return await store_saved(
            services, new, customer.reference, setup, token=token, save=save, created=created
        )


async def store_saved(
    services: Services,
    new: NewRecord,
    customer: str,
    setup: PartnerSetup,
    *,
    token: str | None,
    save: SaveRequest,
    created: bool = False,
    undo_on_failure: bool = True,
) -> Record:
    """Seal a payment method whose setup succeeded, with what resolve hands to billing.

    Call with ``services.locks`` held for the customer. Mandate acceptance goes to the
    audit trail first (fail closed: no token for a mandate whose evidence is not kept).
    """
    vault, partner = services.vault, services.partner
    assert new.customer_ref is not None  # noqa: S101 - only saved with a customer
    assert new.partner_reference is not None  # noqa: S101 - adapters always return one
    details = {**new.details, "partner_customer": customer}
    if new.kind is Kind.BANK:
        details["mandate_reference"] = setup.mandate
    token = token or new_token(new.kind)
    reference = new.partner_reference
    try:
        if save.mandate is not None:
            await append_or_refuse(
                vault,
                services.metrics,
                EventType.MANDATE_ACCEPT,
                outcome=Outcome.SUCCESS,
                actor=save.actor,
                origin=save.origin,
                resource=token,
                # The shopper's device information is personal data: it lives here, under
                # the audit trail's retention, and at the partner in the mandate, not in
                # the record.
                detail={
                    # An IPv6 address can be written in decimal-looking groups.
                    "ip_address": recordable(vault, "ip_address", save.mandate.ip_address),
                    "user_agent": save.mandate.user_agent,
                    "accepted_at": save.mandate.accepted_at,
                },
            )
        record: Record = await vault_call(
            services,
            "put",
            sync.put_linked(
                vault, replace(new, details=details), token=token, outbox_key=save.outbox_key
            ),
        )
    except ProxyError:
        if not undo_on_failure:
            raise
        # Not stored, so not kept saved either.
        await _quietly(services, "detach", partner.detach(reference))
        if created:
            await _undo_first_use(services, new.customer_ref, customer)
        raise
    return record


async def attach_single_use(
    services: Services,
    token: str,
    customer_ref: str,
    *,
    actor: str | None,
    reserved: str | None = None,
) -> Record:
    """Save a single-use card token's payment method on a customer: the missing checkout
    step for a card the hosted card fields tokenized (publishable keys send no customer).

    The same off-session setup (a SetupIntent) as ``POST /v1/cards`` with customer_ref, so
    3-D Secure and the partner customer work alike. The saved card gets a new, reusable
    token (``reserved`` when an idempotent request reserved one); the single-use token
    is deleted once the new one is stored, so a failure in between leaves two tokens,
    never none. Already saved on this customer: its record as it is.
    """
    ref = _customer_ref(customer_ref)
    vault = services.vault
    try:
        record: Record = await vault_call(services, "get", vault.get(token))
    except RecordNotFound:
        raise NotFound("No such token.", param="token") from None
    if record.kind is not Kind.CARD:
        raise InvalidRequest(
            "Only card tokens are saved on a customer this way.", code="invalid_value"
        )
    if record.details.get("detached_at"):
        raise TokenGone(
            "The payment method was detached at the partner; it can no longer be saved.",
            code="token_detached",
            param="token",
        )
    if record.customer_ref is not None:
        if record.customer_ref == ref:
            return record
        raise Conflict("The token is saved on another customer.", code="conflict")
    if record.partner != services.partner.name:
        raise PartnerError("The token's payment partner is not configured.")
    details = {k: v for k, v in record.details.items() if k != "partner_customer"}
    saved: Record = await store_payment_method(
        services,
        NewRecord(
            kind=record.kind,
            partner=record.partner,
            partner_reference=record.partner_reference,
            details=details,
            customer_ref=ref,
            metadata=record.metadata,
        ),
        token=reserved,
        save=SaveRequest(actor=actor),
    )
    await vault_call(services, "delete", vault.delete(token))
    return saved


# -- listing and access report -----------------------------------------------------


def _body(answer: msgspec.Struct) -> dict[str, Any]:
    """An answer as the JSON-ready dict handlers send (its shape is the document's)."""
    body: dict[str, Any] = msgspec.to_builtins(answer)
    return body


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
    return _body(
        TokenList(
            object="list",
            customer_ref=ref,
            data=[listed_view(record) for record in page.records],
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )
    )


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


def _held_summary(record: Record) -> str:
    """What a partner object is, in words an access report can show: never its id."""
    details = record.details
    if record.kind is Kind.CARD:
        brand = details.get("brand") or "card"
        return f"{record.partner}: payment method for {brand} card …{details.get('last4', '')}"
    if record.kind is Kind.BANK:
        return f"{record.partner}: SEPA debit payment method for IBAN {details.get('masked', '')}"
    return f"{record.partner}: invoice {details.get('invoice_number', '')}".rstrip()


async def export_customer(services: Services, customer_ref: str) -> dict[str, Any]:
    """The data-subject access report: everything the vault holds about a customer.

    Records past retention but not yet swept are included (flagged ``expired``): they
    are still held, and an access report lists what is held. It names which partner
    holds what, never the partner's ids (``pm_…``, ``cus_…``, mandate and invoice
    references): those reach only `resolve` clients, each behind its audit event.
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
        entry = listed_view(record)
        entry["partner"] = record.partner
        entry["expired"] = vault.is_expired(record, now)
        days = vault.retention.days(record.kind)
        entry["retention"] = {
            "days": days or None,
            "counted_from": str(BASIS[record.kind]) if days else None,
        }
        entries.append(entry)
        if record.partner and record.partner_reference:
            held.append(
                {
                    "partner": record.partner,
                    "object": "payment_method" if record.kind in PARTNER_HOLDS else "invoice",
                    "token": record.token,
                    "summary": _held_summary(record),
                    "holds": PARTNER_HOLDS.get(record.kind, _INVOICE_HOLDS),
                }
            )
    if customer is not None:
        held.append(
            {
                "partner": customer.partner,
                "object": "customer",
                "summary": f"{customer.partner}: customer object",
                "holds": "a customer object without personal fields; the payment methods"
                " above are attached to it",
            }
        )
    return _body(
        CustomerExport(
            object="customer_export",
            customer_ref=ref,
            generated_at=iso(now),
            counts=counts,
            records=entries,
            partner_customer=None
            if customer is None
            else {"partner": customer.partner, "created_at": iso(customer.created_at)},
            held_by_partner=held,
            never_stored="Card numbers, expiry dates, security codes, full IBANs, account"
            " holder names and emails are never stored by this service; the payment partner"
            " holds them, as listed in held_by_partner.",
        )
    )


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
    try:
        await partner_call(services, "detach", partner.detach(record.partner_reference))
    except PartnerError as exc:
        return exc.code
    return None


async def preview_erasure(services: Services, customer_ref: str) -> dict[str, Any]:
    """What erasing a customer would remove, read from the vault and the partner.

    Nothing is changed. Deleting the partner customer cancels its subscriptions at once
    (https://docs.stripe.com/api/customers/delete), which the shop may want to know first.
    """
    ref = _customer_ref(customer_ref)
    vault, partner = services.vault, services.partner
    records = await _all_records(services, ref, include_expired=True)
    tokens: dict[str, int] = {}
    for record in records:
        tokens[str(record.kind)] = tokens.get(str(record.kind), 0) + 1
    customer = await vault_call(services, "get_customer", vault.get_partner_customer(ref))
    held: dict[str, Any] = {"customer": False, "payment_methods": {}, "subscriptions": 0}
    if customer is not None and customer.partner == partner.name:
        held["customer"] = True
        # Cards always; other types where the vault holds some (the sandbox lists cards
        # only, and this proxy saves no other type without a token of it).
        kinds = {Kind.CARD} | {record.kind for record in records if record.kind in PARTNER_KIND}
        for kind in (PARTNER_KIND[k] for k in kinds):
            listed = await partner_call(
                services,
                "list_payment_methods",
                partner.list_payment_methods(customer.reference, kind=kind),
            )
            held["payment_methods"][kind] = len(listed)
        held["subscriptions"] = await partner_call(
            services, "count_subscriptions", partner.count_subscriptions(customer.reference)
        )
    return _body(
        ErasurePreview(
            object="customer_erasure_preview", customer_ref=ref, tokens=tokens, partner=held
        )
    )


async def erase_customer(services: Services, customer_ref: str) -> dict[str, Any]:
    """Erase a customer: detach at the partner, delete the partner customer, crypto-shred.

    Idempotent. Every payment method is detached and the partner customer deleted
    (each call retried within bounds by the partner's resilience layer) before the
    vault deletes the customer's rows, data key and idempotency keys in one
    transaction. A record whose detach failed, and the mapping when the partner
    customer could not be deleted, are kept (with the key they need) so a repeated
    request can finish; the result lists them and raises ErasureIncomplete. It reports
    only what it saw: a repeat answers ``already_erased``; a customer_ref the vault
    holds nothing under is 404 ``customer_not_found``; a record it cannot read fails
    the request (503 ``record_unreadable``) before anything is deleted.
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
            try:
                await partner_call(
                    services, "delete_customer", partner.delete_customer(customer.reference)
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
            # Stripe cancels a deleted customer's active subscriptions at once
            # (https://docs.stripe.com/api/customers/delete).
            "subscriptions_cancelled": customer is not None and customer_deleted,
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
    # NOT_FOUND was answered as 404 above.
    erased = erasure.status is ErasureStatus.ERASED
    return _body(
        Erasure(
            object="customer_erasure", status="erased" if erased else "already_erased", **report
        )
    )


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
        # Stripe refuses to detach a PaymentMethod saved on no customer ("not attached
        # to a customer so detachment is impossible",
        # https://docs.stripe.com/api/payment_methods/detach): nothing to undo there.
        detach = (
            record.kind in PARTNER_HOLDS and bool(record.partner_reference) and reusable(record)
        )
        if detach:
            if record.partner != services.partner.name:
                raise PartnerError("The token's payment partner is not configured.")
            assert record.partner_reference is not None  # noqa: S101 - checked above
            # A partner failure propagates as itself (503/504/502): nothing deleted, retry.
            await partner_call(
                services, "detach", services.partner.detach(record.partner_reference)
            )
        deleted = await vault_call(services, "delete", vault.delete(token))
    if not deleted:
        raise NotFound("No such token.", param="token")
    services.metrics.tokens_deleted.labels(str(record.kind), "delete").inc()
    return _body(
        TokenDeletion(
            object="token_deletion",
            token=token,
            kind=str(record.kind),
            deleted=True,
            partner_detached=detach,
        )
    )


# -- audit (PCI DSS 10.2.2: deletions and erasures are recorded) ------------------


def customer_resource(services: Services, customer_ref: str) -> str:
    """A customer as an audit resource: its keyed digest, never the ref itself.

    The trail outlives the erasure it records; a keyed digest lets an operator holding
    the key ring confirm "this customer was erased" without the trail keeping the ref.
    """
    return services.vault.audit.digest("customer", customer_ref)


async def _audited(
    services: Services,
    event_type: str,
    resource: str,
    *,
    failed_resource: str | None = None,
    actor: str,
    origin: str | None,
    call: Awaitable[dict[str, Any]],
    summary: Any,
) -> dict[str, Any]:
    """Run ``call`` and write its audit event, success or failure; 503 if it cannot be.

    ``failed_resource`` names the resource on failure, when the call's success is what
    shows ``resource`` to be safe to record (a token the vault found).
    """
    failed = resource if failed_resource is None else failed_resource

    async def record(outcome: Outcome, subject: str, detail: dict[str, Any]) -> None:
        await append_or_refuse(
            services.vault,
            services.metrics,
            event_type,
            outcome=outcome,
            actor=actor,
            origin=origin,
            resource=subject,
            detail=detail,
        )

    try:
        result = await call
    except ProxyError as exc:
        detail: dict[str, Any] = {"error": exc.code}
        if isinstance(exc, ErasureIncomplete):
            # What was done before it stopped, so the trail shows what a retry must finish.
            detail |= {"remaining": len(exc.report["remaining"]), **summary(exc.report)}
        await record(Outcome.FAILURE, failed, detail)
        raise
    await record(Outcome.SUCCESS, resource, summary(result))
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
    try:
        ref = _customer_ref(customer_ref)
    except ProxyError as exc:
        # A refused erasure is still an attempt to delete: recorded, by digest only.
        await append_or_refuse(
            services.vault,
            services.metrics,
            EventType.ERASURE,
            outcome=Outcome.FAILURE,
            actor=actor,
            origin=origin,
            resource=customer_resource(services, customer_ref),
            detail={"error": exc.code},
        )
        raise
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
        resource_of(services.vault, token, found=True),
        failed_resource=resource_of(services.vault, token, found=False),
        actor=actor,
        origin=origin,
        call=delete_token(services, token),
        summary=lambda r: {"kind": r["kind"], "partner_detached": r["partner_detached"]},
    )
