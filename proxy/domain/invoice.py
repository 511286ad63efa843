"""Invoice references, no I/O: Swedish bankgiro OCR numbers."""

from __future__ import annotations

from proxy.domain.card import detect_brand, luhn_valid
from proxy.domain.errors import InvalidRequest, ValidationFailed

# --------------------------------------------------------------------------- OCR


def ocr_valid(ref: str, *, length_digit: bool = False) -> bool:
    """Whether a Swedish bankgiro OCR reference is valid.

    2-25 ASCII digits whose last digit is the Luhn check digit over the rest.
    With ``length_digit`` the second-to-last digit must also equal the total
    length (check and length digit included) mod 10.
    """
    if not 2 <= len(ref) <= 25 or not luhn_valid(ref):
        return False
    return not length_digit or int(ref[-2]) == len(ref) % 10


def validate_ocr(raw: object, *, param: str = "ocr_reference") -> str:
    """A valid OCR reference from user input, spaces removed.

    The length digit is not required: payees choose per bankgiro agreement
    whether they use one, and a reference with a length digit is still
    Luhn-valid, so checking without it accepts both kinds.
    """
    if not isinstance(raw, str):
        raise InvalidRequest(
            "The OCR reference must be a string.", code="invalid_type", param=param
        )
    ref = raw.replace(" ", "")
    if not ocr_valid(ref):
        raise ValidationFailed(
            "The OCR reference is invalid.", code="invalid_ocr_reference", param=param
        )
    # An OCR reference is Luhn-checked like a PAN, so a card number typed into the
    # wrong field passes the OCR rules: one a card brand could have issued (its IIN
    # range and length) is refused rather than stored and shown to read clients.
    if detect_brand(ref) is not None:
        raise ValidationFailed(
            "The OCR reference has the form of a card number.",
            code="ocr_reference_card_like",
            param=param,
        )
    return ref
