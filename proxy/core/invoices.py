"""Invoice references: validated and sealed in the vault as ``vtok_inv_…`` tokens.

No partner call is made: a partner and partner reference, when given, are stored
(inside the ciphertext) so the billing service can resolve them later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

from proxy.core.services import Services, created_response, vault_call
from proxy.domain.card import pan_like
from proxy.domain.errors import InvalidRequest, ValidationFailed
from proxy.domain.fields import _echoable, validate_customer_ref
from proxy.domain.iban import iban_like
from proxy.domain.invoice import ocr_valid, validate_ocr
from vault import Kind, NewRecord, Record

# ISO 4217 list one (maintained by SIX), current codes as of 2025: ZWG replaced ZWL
# (2024), HRK and SLL are withdrawn, ANG and XCG overlap during the Caribbean guilder
# changeover. Currencies and funds only. Left out on purpose: precious metals (XAU,
# XAG, XPD, XPT), bond-market units (XBA-XBD), XDR, XSU, XUA, the testing code XTS and
# "no currency" XXX: no invoice is payable in those.
ISO_4217: Final = frozenset(
    {
        "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
        "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
        "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE",
        "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL",
        "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR",
        "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD",
        "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK",
        "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO",
        "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON",
        "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD",
        "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD",
        "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV",
        "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
    }
)  # fmt: skip
MAX_AMOUNT: Final = 10**15  # minor units; far above any invoice, far below float trouble
_FIELDS: Final = frozenset(
    {
        "customer_ref",
        "invoice_number",
        "ocr_reference",
        "ocr_length_digit",
        "amount",
        "currency",
        "due_date",
        "partner",
        "partner_reference",
    }
)
_REQUIRED: Final = ("customer_ref", "invoice_number", "amount", "currency", "due_date")
_INVOICE_NUMBER_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./#-]{0,63}")
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_PARTNER_REFERENCE_RE: Final = re.compile(r"[A-Za-z0-9_]{1,255}")


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


def _invalid(message: str, code: str, param: str) -> ValidationFailed:
    return ValidationFailed(message, code=code, param=param)


def _iso_date(raw: str) -> date:
    """A calendar date written YYYY-MM-DD (fromisoformat alone also takes 20240131)."""
    try:
        due = date.fromisoformat(raw) if _DATE_RE.fullmatch(raw) else None
    except ValueError:
        due = None
    if due is None:
        raise _invalid(
            "due_date must be an ISO 8601 date (YYYY-MM-DD).", "invalid_date", "due_date"
        )
    return due


def parse_invoice_request(body: object, *, partners: frozenset[str]) -> InvoiceRequest:
    """Validate an invoice body; ``partners`` are the partner names we accept."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    for key in body:
        if key not in _FIELDS:
            raise InvalidRequest("Unknown field.", code="unknown_field", param=_echoable(key))
    for name in _REQUIRED:
        if body.get(name) is None:
            raise InvalidRequest(f"{name} is required.", code="missing_field", param=name)
    customer_ref = validate_customer_ref(body["customer_ref"])
    assert customer_ref is not None  # noqa: S101 - required above

    number = body["invoice_number"]
    if not isinstance(number, str):
        raise InvalidRequest(
            "invoice_number must be a string.", code="invalid_type", param="invoice_number"
        )
    if _INVOICE_NUMBER_RE.fullmatch(number) is None or pan_like(number) or iban_like(number):
        raise _invalid(
            "invoice_number must be 1-64 of letters, digits, '_', '.', '/', '#' or '-'.",
            "invalid_invoice_number",
            "invoice_number",
        )

    ocr: str | None = None
    length_digit = body.get("ocr_length_digit", False)
    if not isinstance(length_digit, bool):
        raise InvalidRequest(
            "ocr_length_digit must be a boolean.", code="invalid_type", param="ocr_length_digit"
        )
    if body.get("ocr_reference") is not None:
        ocr = validate_ocr(body["ocr_reference"])
        # The payee's bankgiro agreement says whether references carry a length digit;
        # the caller tells us, and then it is checked too.
        if length_digit and not ocr_valid(ocr, length_digit=True):
            raise _invalid(
                "The OCR reference's length digit does not match its length.",
                "invalid_ocr_length_digit",
                "ocr_reference",
            )
    elif length_digit:
        raise InvalidRequest(
            "ocr_length_digit needs an ocr_reference.",
            code="missing_field",
            param="ocr_reference",
        )

    amount = body["amount"]
    # bool is an int in Python; JSON true is not an amount. Floats are refused
    # outright: minor units are whole numbers.
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidRequest(
            "amount must be an integer in minor units.", code="invalid_type", param="amount"
        )
    if not 0 <= amount <= MAX_AMOUNT:
        raise _invalid(f"amount must be from 0 to {MAX_AMOUNT}.", "invalid_amount", "amount")

    currency = body["currency"]
    if not isinstance(currency, str):
        raise InvalidRequest("currency must be a string.", code="invalid_type", param="currency")
    if currency.upper() not in ISO_4217 or len(currency) != 3:
        raise _invalid("currency must be a current ISO 4217 code.", "invalid_currency", "currency")

    raw_date = body["due_date"]
    if not isinstance(raw_date, str):
        raise InvalidRequest("due_date must be a string.", code="invalid_type", param="due_date")
    due = _iso_date(raw_date)

    partner, reference = body.get("partner"), body.get("partner_reference")
    if (partner is None) != (reference is None):
        raise InvalidRequest(
            "partner and partner_reference go together.",
            code="missing_field",
            param="partner" if partner is None else "partner_reference",
        )
    if partner is not None:
        if not isinstance(partner, str) or partner not in partners:
            raise _invalid("partner is not a configured partner.", "unsupported_partner", "partner")
        if (
            not isinstance(reference, str)
            or _PARTNER_REFERENCE_RE.fullmatch(reference) is None
            or pan_like(reference)
            or iban_like(reference)
        ):
            raise _invalid(
                "partner_reference must be 1-255 letters, digits or '_'.",
                "invalid_partner_reference",
                "partner_reference",
            )
    return InvoiceRequest(
        customer_ref=customer_ref,
        invoice_number=number,
        ocr_reference=ocr,
        amount=amount,
        currency=currency.upper(),
        due_date=due,
        partner=partner,
        partner_reference=reference,
    )


async def create_invoice(services: Services, body: object) -> dict[str, Any]:
    """Validate and store an invoice reference; returns its token and masked view."""
    invoice = parse_invoice_request(body, partners=frozenset({services.partner.name}))
    return created_response(await store_invoice(services, invoice, token=None))


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
