"""Invoice references, no I/O: Swedish bankgiro OCR numbers and ISO 4217 currency codes."""

from __future__ import annotations

from typing import Final

from iso4217 import Currency

from proxy.domain.card import detect_brand, luhn_valid
from proxy.domain.errors import InvalidRequest, ValidationFailed

# ---------------------------------------------------------------------- currency

# Units of account that ISO 4217 gives a minor unit, yet no invoice is payable in:
# the IMF's and the Arab Monetary Fund's accounting units, the ALBA SUCRE, the African
# Development Bank's unit.
_UNITS_OF_ACCOUNT: Final = frozenset({"XAD", "XDR", "XSU", "XUA"})

# ISO 4217 list one (SIX, the maintenance agency), as the iso4217 package ships it: the
# current currencies and funds. Codes without a minor unit (precious metals, bond-market
# units, the testing code XTS, "no currency" XXX) cannot carry an amount in minor units.
ISO_4217: Final = frozenset(
    currency.code
    for currency in Currency
    if currency.exponent is not None and currency.code not in _UNITS_OF_ACCOUNT
)


def validate_currency(raw: str) -> str:
    """A current ISO 4217 code (upper case) from user input; never echoes it when refused."""
    code = raw.upper()
    if len(raw) != 3 or code not in ISO_4217:
        raise ValidationFailed(
            "currency must be a current ISO 4217 code.", code="invalid_currency", param="currency"
        )
    return code


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
