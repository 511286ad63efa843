"""What each client sees of a stored record: the API's response shapes, filled from a Record.

The vault keeps records; which fields reach which scope is decided here. A `read`
client gets the masked view. A `resolve` client gets the partner references an
off-session charge needs as well: the payment method, the partner customer it is saved
on and, for SEPA debit, the mandate. The shapes are the Structs of
:mod:`proxy.domain.schemas`, so the document describes exactly what is sent.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from proxy.domain.schemas import (
    BankToken,
    BankView,
    CardToken,
    CardView,
    InvoiceToken,
    InvoiceView,
)
from vault import Kind, Record, iso

# Details that are partner references (the design lets only `resolve` see those): the
# SEPA mandate (`mandate_…`) and the partner customer the method is saved on (`cus_…`).
RESOLVE_ONLY_DETAILS: Final = frozenset({"mandate_reference", "partner_customer"})

_CREATED: Final[dict[Kind, type[msgspec.Struct]]] = {
    Kind.CARD: CardToken,
    Kind.BANK: BankToken,
    Kind.INVOICE: InvoiceToken,
}
_READ: Final[dict[Kind, type[msgspec.Struct]]] = {
    Kind.CARD: CardView,
    Kind.BANK: BankView,
    Kind.INVOICE: InvoiceView,
}


def _view(
    shape: type[msgspec.Struct], record: Record, *, resolve: bool = False, listing: bool = False
) -> dict[str, Any]:
    names = shape.__struct_fields__
    values: dict[str, Any] = {
        "token": record.token,
        "kind": str(record.kind),
        "customer_ref": record.customer_ref,
        "metadata": record.metadata,
        "created_at": iso(record.created_at),
    }
    if record.kind in (Kind.CARD, Kind.BANK):
        values["reusable"] = reusable(record)
    values.update(
        (key, value)
        for key, value in record.details.items()
        if resolve or key not in RESOLVE_ONLY_DETAILS
    )
    if listing:
        values["last_used_at"] = iso(record.last_used_at) if record.last_used_at else None
    if resolve:
        values["partner"] = record.partner
        values["partner_reference"] = record.partner_reference
    view = shape(**{key: value for key, value in values.items() if key in names})
    result: dict[str, Any] = msgspec.to_builtins(view)
    return result


def reusable(record: Record) -> bool:
    """Whether the partner lets the payment method be charged more than once.

    Stripe: a PaymentMethod saved on no Customer can be used for one payment, and "to
    use a PaymentMethod multiple times, you must attach it to a Customer first"
    (https://docs.stripe.com/payments/save-and-reuse). Ours are saved on a customer
    exactly when the token has a customer_ref.
    """
    return record.customer_ref is not None or "partner_customer" in record.details


def created_view(record: Record) -> dict[str, Any]:
    """The body of a 201: the new token and what the caller may show of it."""
    return _view(_CREATED[record.kind], record)


def masked_view(record: Record) -> dict[str, Any]:
    """What a `read` client may see: no partner reference (a SEPA mandate id is one)."""
    return _view(_READ[record.kind], record)


def listed_view(record: Record) -> dict[str, Any]:
    """A record in a customer's listing: the masked view and when it was last used."""
    return _view(_READ[record.kind], record, listing=True)


def resolved_view(record: Record) -> dict[str, Any]:
    """What a `resolve` client may see: the masked view plus the partner references.

    The partner customer is absent when the method is saved on none.
    """
    return _view(_READ[record.kind], record, resolve=True)
