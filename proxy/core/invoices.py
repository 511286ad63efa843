"""Invoice references: validated and sealed in the vault as ``vtok_inv_…`` tokens.

No partner call is made: a partner and partner reference, when given, are stored
(inside the ciphertext) so the billing service can resolve them later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

from proxy.core.services import Services, vault_call
from proxy.core.views import created_view
from proxy.domain.card import pan_like
from proxy.domain.decode import decode
from proxy.domain.errors import InvalidRequest, ValidationFailed
from proxy.domain.fields import validate_customer_ref
from proxy.domain.iban import iban_like
from proxy.domain.invoice import ocr_valid, validate_currency, validate_ocr
from proxy.domain.schemas import (
    INVOICE_NUMBER_PATTERN,
    MAX_AMOUNT,
    PARTNER_REFERENCE_PATTERN,
    InvoiceRequestBody,
)
from vault import Kind, NewRecord, Record

_INVOICE_NUMBER_RE: Final = re.compile(INVOICE_NUMBER_PATTERN)
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_PARTNER_REFERENCE_RE: Final = re.compile(PARTNER_REFERENCE_PATTERN)


@dataclass(frozen=True, slots=True)
class InvoiceRequest:
    """A validated ``POST /v1/invoices`` body."""

    customer_ref: str
    invoice_number: str
    ocr_reference: str | None
    amount: int
    currency: str
    due_date: date
    partner: str | None
    partner_reference: str | None


def _iso_date(raw: str) -> date:
    """A calendar date written YYYY-MM-DD (fromisoformat alone also takes 20240131)."""
    try:
        due = date.fromisoformat(raw) if _DATE_RE.fullmatch(raw) else None
    except ValueError:
        due = None
    if due is None:
        raise ValidationFailed(
            "due_date must be an ISO 8601 date (YYYY-MM-DD).", code="invalid_date", param="due_date"
        )
    return due


def parse_invoice_request(body: object, *, partners: frozenset[str]) -> InvoiceRequest:
    """Validate an invoice body; ``partners`` are the partner names we accept."""
    invoice = decode(body, InvoiceRequestBody)
    customer_ref = validate_customer_ref(invoice.customer_ref)
    assert customer_ref is not None  # noqa: S101 - required by the schema

    number = invoice.invoice_number
    if _INVOICE_NUMBER_RE.fullmatch(number) is None or pan_like(number) or iban_like(number):
        raise ValidationFailed(
            "invoice_number must be 1-64 of letters, digits, '_', '.', '/', '#' or '-'.",
            code="invalid_invoice_number",
            param="invoice_number",
        )

    ocr: str | None = None
    length_digit = invoice.ocr_length_digit
    raw_ocr = invoice.ocr_reference
    if raw_ocr is not None:
        ocr = validate_ocr(raw_ocr)
        # The payee's bankgiro agreement says whether references carry a length digit;
        # the caller tells us, and then it is checked too.
        if length_digit and not ocr_valid(ocr, length_digit=True):
            raise ValidationFailed(
                "The OCR reference's length digit does not match its length.",
                code="invalid_ocr_length_digit",
                param="ocr_reference",
            )
    elif length_digit:
        raise InvalidRequest(
            "ocr_length_digit needs an ocr_reference.",
            code="missing_field",
            param="ocr_reference",
        )

    # Floats and booleans are refused by the schema: minor units are whole numbers.
    amount = invoice.amount
    if not 0 <= amount <= MAX_AMOUNT:
        raise ValidationFailed(
            f"amount must be from 0 to {MAX_AMOUNT}.", code="invalid_amount", param="amount"
        )

    currency = validate_currency(invoice.currency)

    due = _iso_date(invoice.due_date)

    partner: object = invoice.partner
    reference: object = invoice.partner_reference
    if (partner is None) != (reference is None):
        raise InvalidRequest(
            "partner and partner_reference go together.",
            code="missing_field",
            param="partner" if partner is None else "partner_reference",
        )
    if partner is not None:
        if not isinstance(partner, str) or partner not in partners:
            raise ValidationFailed(
                "partner is not a configured partner.",
                code="unsupported_partner",
                param="partner",
            )
        if (
            not isinstance(reference, str)
            or _PARTNER_REFERENCE_RE.fullmatch(reference) is None
            or pan_like(reference)
            or iban_like(reference)
        ):
            raise ValidationFailed(
                "partner_reference must be 1-255 letters, digits or '_'.",
                code="invalid_partner_reference",
                param="partner_reference",
            )
    return InvoiceRequest(
        customer_ref=customer_ref,
        invoice_number=number,
        ocr_reference=ocr,
        amount=amount,
        currency=currency,
        due_date=due,
        partner=partner,
        # A str here: the checks above refuse anything else beside a partner.
        partner_reference=reference if isinstance(reference, str) else None,
    )


async def create_invoice(services: Services, body: object) -> dict[str, Any]:
    """Validate and store an invoice reference; returns its token and masked view."""
    invoice = parse_invoice_request(body, partners=frozenset({services.partner.name}))
    return created_view(await store_invoice(services, invoice, token=None))


async def store_invoice(
    services: Services, invoice: InvoiceRequest, *, token: str | None
) -> Record:
    """Seal an invoice reference under a new (or the reserved) token."""
    details: dict[str, Any] = {
        "invoice_number": invoice.invoice_number,
        "ocr_reference": invoice.ocr_reference,
        "amount": invoice.amount,
        "currency": invoice.currency,
        "due_date": invoice.due_date.isoformat(),
    }
    record: Record = await vault_call(
        services,
        "put",
        services.vault.put(
            NewRecord(
                kind=Kind.INVOICE,
                partner=invoice.partner,
                partner_reference=invoice.partner_reference,
                details=details,
                customer_ref=invoice.customer_ref,
            ),
            token=token,
        ),
    )
    services.metrics.child(services.metrics.tokens_created, "invoice").inc()
    return record
