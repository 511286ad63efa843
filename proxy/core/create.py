"""Creating tokens: one entry point per kind, with or without an Idempotency-Key.

Each takes the parsed body and the :class:`Call` that carries it, and returns the
:class:`~proxy.core.idempotent.Answer` to send. Without a key the token is created
once for this request; with one it is created at most once per (client, key), and
the first answer is replayed after that (:mod:`proxy.core.idempotent`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

from proxy.core import idempotent
from proxy.core.bank_accounts import (
    create_sepa_at_partner,
    store_bank_account,
    tokenize_bank_account,
)
from proxy.core.card_setup import confirm_card_setup, parse_confirm_request
from proxy.core.cards import tokenize_card
from proxy.core.customers import attach_single_use, open_pending
from proxy.core.idempotent import Answer
from proxy.core.invoices import create_invoice, parse_invoice_request, store_invoice
from proxy.core.services import Services
from proxy.core.views import created_view
from proxy.domain.bank import parse_bank_account_request
from proxy.domain.decode import decode
from proxy.domain.errors import InvalidRequest
from proxy.domain.fields import validate_customer_ref
from proxy.domain.schemas import TokenAttachRequestBody
from vault import Kind, Record


@dataclass(frozen=True, slots=True)
class Call:
    """Who asks for a token, and the exact request bytes an Idempotency-Key binds to."""

    client: str
    key: str | None
    raw: bytes
    request_id: str
    origin: str | None = None


def created(view: dict[str, Any]) -> Answer:
    """A fresh 201 answer for a token's view."""
    return Answer(201, json.dumps(view).encode(), token=view["token"])


async def _once(
    services: Services,
    call: Call,
    *,
    customer_ref: str | None,
    kind: Kind,
    store_step: idempotent.StoreStep,
    partner_step: idempotent.PartnerStep | None = None,
    token: str | None = None,
) -> Answer:
    """Create at most once per (client, key): the keyed path shared by every kind."""
    assert call.key is not None  # noqa: S101 - callers take the unkeyed path first
    return await idempotent.create_once(
        services,
        client=call.client,
        key=call.key,
        raw=call.raw,
        request_id=call.request_id,
        customer_ref=customer_ref,
        kind=kind,
        partner_step=partner_step,
        store_step=store_step,
        respond=created_view,
        token=token,
    )


async def card(services: Services, body: object, call: Call, *, today: date) -> Answer:
    """POST /v1/cards: validate the card, create it at the partner, seal the answer."""
    if call.key is None:
        return created(await tokenize_card(services, body, today=today, actor=call.client))
    return await idempotent.tokenize_card_once(
        services,
        client=call.client,
        key=call.key,
        raw=call.raw,
        body=body,
        today=today,
        request_id=call.request_id,
    )


async def confirmed_card(services: Services, body: object, call: Call) -> Answer:
    """POST /v1/cards/confirm: the token of a card whose holder completed authentication."""
    sealed = parse_confirm_request(body)
    if call.key is None:
        record = await confirm_card_setup(services, sealed, client=call.client)
        return created(created_view(record))

    async def store_step(_result: dict[str, Any], token: str) -> Record:
        return await confirm_card_setup(services, sealed, client=call.client, token=token)

    # Opening the setup first refuses a foreign or expired one before the key is recorded,
    # and names the customer whose erasure must take this key with it, and the token the
    # partner's objects already name.
    pending = open_pending(services, sealed, call.client)
    return await _once(
        services,
        call,
        customer_ref=pending.new.customer_ref,
        kind=Kind.CARD,
        store_step=store_step,
        token=pending.token,
    )


async def attached_card(services: Services, token: str, body: object, call: Call) -> Answer:
    """POST /v1/tokens/{token}/attach: a single-use card saved on a customer, reusable."""
    # Checked before the key is recorded (a fixed body may reuse the key), with the same
    # rules as every customer_ref: no card or account number.
    customer_ref = validate_customer_ref(decode(body, TokenAttachRequestBody).customer_ref)
    if customer_ref is None:  # pragma: no cover - the schema requires it
        raise InvalidRequest("customer_ref is required.", param="customer_ref")
    if call.key is None:
        record = await attach_single_use(services, token, customer_ref, actor=call.client)
        return created(created_view(record))

    async def store_step(_: dict[str, Any], reserved: str) -> Record:
        return await attach_single_use(
            services, token, customer_ref, actor=call.client, reserved=reserved
        )

    return await _once(
        services, call, customer_ref=customer_ref, kind=Kind.CARD, store_step=store_step
    )


async def bank_account(services: Services, body: object, call: Call) -> Answer:
    """POST /v1/bank-accounts: a SEPA debit payment method from an IBAN."""
    if call.key is None:
        return created(
            await tokenize_bank_account(services, body, actor=call.client, origin=call.origin)
        )
    # Validated before the key is recorded: a fixed body may reuse the key.
    account = parse_bank_account_request(body)

    async def partner_step(partner_key: str, token: str) -> dict[str, Any]:
        return await create_sepa_at_partner(services, account, partner_key, token=token)

    async def store_step(created_at_partner: dict[str, Any], token: str) -> Record:
        return await store_bank_account(
            services,
            account,
            created_at_partner,
            token=token,
            actor=call.client,
            origin=call.origin,
        )

    return await _once(
        services,
        call,
        customer_ref=account.customer_ref,
        kind=Kind.BANK,
        partner_step=partner_step,
        store_step=store_step,
    )


async def invoice(services: Services, body: object, call: Call) -> Answer:
    """POST /v1/invoices: an invoice reference under a ``vtok_inv_`` token."""
    if call.key is None:
        return created(await create_invoice(services, body))
    parsed = parse_invoice_request(body, partners=frozenset({services.partner.name}))

    async def store_step(_: dict[str, Any], token: str) -> Record:
        return await store_invoice(services, parsed, token=token)

    return await _once(
        services, call, customer_ref=parsed.customer_ref, kind=Kind.INVOICE, store_step=store_step
    )
