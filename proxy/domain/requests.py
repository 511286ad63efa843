"""Card request bodies: structure first, then the card rules of :mod:`proxy.domain.card`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from proxy.domain.card import (
    _brand_for_prefix,
    _invalid_number,
    _is_ascii_digits,
    detect_brand,
    expected_cvc_length,
    luhn_valid,
    normalize_pan,
    pan_like,
    parse_expiry,
)
from proxy.domain.decode import decode
from proxy.domain.errors import CardValidationFailed
from proxy.domain.fields import validate_customer_ref, validate_metadata, validate_return_url
from proxy.domain.hazmat import CardNumber, Cvc
from proxy.domain.schemas import (
    HOLDER_NAME_MAX,
    POSTAL_CODE_MAX_DIGITS,
    POSTAL_CODE_PATTERN,
    CardRequestBody,
)

# -------------------------------------------------------------------- card body


@dataclass(frozen=True, slots=True)
class CardRequest:
    """A validated ``POST /v1/cards`` body; lives only for one request."""

    number: CardNumber
    exp_month: int
    exp_year: int
    cvc: Cvc
    brand: str
    holder_name: str | None
    customer_ref: str | None
    metadata: dict[str, str]
    # Where the partner sends the shopper back after authenticating a card being saved.
    return_url: str | None = None
    # The billing postal code: personal data, sent to the partner only.
    postal_code: str | None = None

    def __repr__(self) -> str:
        # Expiry is card data too; the holder name and postal code are personal data.
        holder = None if self.holder_name is None else "***"
        return (
            f"CardRequest(number={self.number!r}, exp=**/**, cvc={self.cvc!r}, "
            f"brand={self.brand!r}, holder_name={holder!r}, "
            f"postal_code={None if self.postal_code is None else '***'!r}, "
            f"customer_ref={self.customer_ref!r}, metadata_keys={sorted(self.metadata)!r})"
        )

    __str__ = __repr__


def _validate_holder_name(value: str | None) -> str | None:
    if value is None:
        return None
    name = value.strip()
    # Control characters would let a name forge log lines downstream.
    if len(name) > HOLDER_NAME_MAX or not name.isprintable() or pan_like(name):
        raise CardValidationFailed(
            "holder_name must be at most 100 printable characters and not a card number.",
            code="invalid_holder_name",
            param="holder_name",
        )
    return name or None


_POSTAL_CODE_RE = re.compile(POSTAL_CODE_PATTERN)


def _validate_postal_code(value: str | None) -> str | None:
    """A billing postal code: letters, digits, spaces and dashes, never a card-like run."""
    if value is None:
        return None
    # ASCII only: a full-width or Arabic-Indic digit run could hide a card number from
    # anything downstream that reads ASCII digits.
    if (
        not _POSTAL_CODE_RE.fullmatch(value)
        or sum(ch.isdigit() for ch in value) > POSTAL_CODE_MAX_DIGITS
        or pan_like(value)
    ):
        raise CardValidationFailed(
            "postal_code must be 1 to 12 letters, digits, spaces or dashes, with at most 10"
            " digits.",
            code="invalid_postal_code",
            param="postal_code",
        )
    return value


def parse_card_request(body: object, *, today: date) -> CardRequest:
    """Validate a card tokenization body: structure, then number, expiry and cvc.

    A number that passes Luhn but starts with no known IIN range is refused as
    ``unsupported_brand`` (we cannot pick the CVC length or tell the shopper what
    we accept); one of a known range with the wrong length is ``invalid_number``.
    """
    card = decode(body, CardRequestBody)
    # Read first: a number or cvc of the wrong JSON type is refused before any card rule.
    raw_number, raw_cvc = card.number, card.cvc

    digits = normalize_pan(raw_number)
    if not luhn_valid(digits):
        raise _invalid_number()
    brand = detect_brand(digits)
    if brand is None:
        if _brand_for_prefix(digits) is not None:
            raise _invalid_number()
        raise CardValidationFailed(
            "This card brand is not supported.", code="unsupported_brand", param="number"
        )

    exp_month, exp_year = parse_expiry(card.exp_month, card.exp_year, today=today)

    if not _is_ascii_digits(raw_cvc) or len(raw_cvc) != expected_cvc_length(brand):
        raise CardValidationFailed(
            "The security code has the wrong format for this card.",
            code="invalid_cvc",
            param="cvc",
        )

    return CardRequest(
        number=CardNumber(digits),
        exp_month=exp_month,
        exp_year=exp_year,
        cvc=Cvc(raw_cvc),
        brand=brand,
        holder_name=_validate_holder_name(card.holder_name),
        customer_ref=validate_customer_ref(card.customer_ref),
        metadata=validate_metadata(card.metadata),
        return_url=validate_return_url(card.return_url),
        postal_code=_validate_postal_code(card.postal_code),
    )
