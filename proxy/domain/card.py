"""Card rules, no I/O: Luhn, IIN ranges and brands, masking, expiry, CVC lengths.

Errors are :mod:`proxy.domain.errors` with fixed messages: a submitted value never
appears in one (ARCHITECTURE "Non-negotiable handling of card data").
"""

from __future__ import annotations

from datetime import date
from typing import Final

from pandetect import holds_pan
from pandetect import redact_pans as detect_redact_pans
from proxy.domain.errors import CardValidationFailed

# --------------------------------------------------------------------------- Luhn


_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit alone accepts "²" and Arabic-Indic digits, which int() and
    # the partner would treat differently from us.
    return text.isascii() and text.isdigit()


def luhn_valid(digits: str) -> bool:
    """Whether a non-empty ASCII digit string passes the Luhn (mod 10) check."""
    if not _is_ascii_digits(digits):
        return False
    total = sum(map(int, digits[-1::-2]))
    total += sum(_DOUBLED[int(c)] for c in digits[-2::-2])
    return total % 10 == 0


# ------------------------------------------------------------------------ brands

# (prefix length, low, high, brand), checked longest prefix first so the more
# specific range wins. 622126-622925 is both a Discover and a UnionPay range
# (network alliance); we call it unionpay because Stripe, our partner, does, and
# the brand we store should match the one the partner reports.
_IIN_RANGES: Final[tuple[tuple[int, int, int, str], ...]] = tuple(
    sorted(
        [
            (2, 34, 34, "amex"),
            (2, 37, 37, "amex"),
            (3, 300, 305, "diners"),
            (2, 36, 36, "diners"),
            (2, 38, 39, "diners"),
            (4, 3528, 3589, "jcb"),
            (4, 5018, 5018, "maestro"),
            (4, 5020, 5020, "maestro"),
            (4, 5038, 5038, "maestro"),
            (4, 5893, 5893, "maestro"),
            (4, 6304, 6304, "maestro"),
            (4, 6759, 6759, "maestro"),
            (4, 6761, 6763, "maestro"),
            (2, 51, 55, "mastercard"),
            (4, 2221, 2720, "mastercard"),
            (4, 6011, 6011, "discover"),
            (3, 644, 649, "discover"),
            (2, 65, 65, "discover"),
            (2, 62, 62, "unionpay"),
            (2, 81, 81, "unionpay"),
            (1, 4, 4, "visa"),
        ],
        key=lambda rule: -rule[0],
    )
)

_BRAND_LENGTHS: Final[dict[str, frozenset[int]]] = {
    "visa": frozenset({13, 16, 19}),
    "mastercard": frozenset({16}),
    "amex": frozenset({15}),
    "discover": frozenset(range(16, 20)),
    "diners": frozenset(range(14, 20)),
    "jcb": frozenset(range(16, 20)),
    "unionpay": frozenset(range(16, 20)),
    "maestro": frozenset(range(12, 20)),
}


def brand_rules() -> dict[str, object]:
    """The IIN ranges, lengths and CVC lengths as JSON data (the card fields use the same rules)."""
    return {
        "ranges": [list(rule) for rule in _IIN_RANGES],
        "lengths": {brand: sorted(lengths) for brand, lengths in _BRAND_LENGTHS.items()},
        "cvc": {brand: expected_cvc_length(brand) for brand in _BRAND_LENGTHS},
    }


def _brand_for_prefix(digits: str) -> str | None:
    """The brand whose IIN range the number starts with, ignoring its length."""
    for prefix_len, low, high, brand in _IIN_RANGES:
        prefix = digits[:prefix_len]
        if len(prefix) == prefix_len and _is_ascii_digits(prefix) and low <= int(prefix) <= high:
            return brand
    return None


def detect_brand(digits: str) -> str | None:
    """The card brand for a PAN by IIN range and length, or None when none fits."""
    brand = _brand_for_prefix(digits)
    if brand is None or len(digits) not in _BRAND_LENGTHS[brand]:
        return None
    return brand


def expected_cvc_length(brand: str) -> int:
    """How many digits the security code of a brand has (4 for amex, else 3)."""
    return 4 if brand == "amex" else 3


def mask_pan(digits: str) -> str:
    """The PAN with everything but first six and last four (PCI DSS 3.4.1) starred.

    Numbers shorter than 14 digits show only the last four, since first six plus
    last four would leave too few digits hidden; four digits or fewer show nothing.
    The result always has the PAN's length.
    """
    n = len(digits)
    if n >= 14:
        return digits[:6] + "*" * (n - 10) + digits[-4:]
    if n > 4:
        return "*" * (n - 4) + digits[-4:]
    return "*" * n


def _invalid_number() -> CardValidationFailed:
    return CardValidationFailed(
        "The card number is invalid.", code="invalid_number", param="number"
    )


def normalize_pan(raw: str) -> str:
    """The PAN's digits with spaces and dashes removed; 12-19 ASCII digits or an error."""
    # Bound the work before copying: no PAN with separators is this long.
    if len(raw) > 64:
        raise _invalid_number()
    digits = raw.replace(" ", "").replace("-", "")
    if not _is_ascii_digits(digits) or not 12 <= len(digits) <= 19:
        raise _invalid_number()
    return digits


# ------------------------------------------------------------------------ expiry


def _small_int(value: object, *, max_len: int) -> int | None:
    """An int, or a string of 1..max_len ASCII digits, as int; None otherwise."""
    # bool is an int subclass: JSON `true` must not become month 1.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and 1 <= len(value) <= max_len and _is_ascii_digits(value):
        return int(value)
    return None


def parse_expiry(exp_month: object, exp_year: object, *, today: date) -> tuple[int, int]:
    """The (month, four-digit year) of a card expiry that has not yet passed.

    A card is valid through the last day of its expiry month, so the current
    month is accepted. Two-digit years mean 20yy. Years more than 50 years ahead
    are refused as typos.
    """
    month = _small_int(exp_month, max_len=2)
    if month is None or not 1 <= month <= 12:
        raise CardValidationFailed(
            "The expiry month must be a number from 1 to 12.",
            code="invalid_expiry_month",
            param="exp_month",
        )
    year: int | None
    if isinstance(exp_year, str) and len(exp_year) not in (2, 4):
        year = None
    else:
        year = _small_int(exp_year, max_len=4)
    if year is not None and 0 <= year <= 99:
        year += 2000
    if year is None or not 1000 <= year <= 9999:
        raise CardValidationFailed(
            "The expiry year must have two or four digits.",
            code="invalid_expiry_year",
            param="exp_year",
        )
    if year > today.year + 50:
        raise CardValidationFailed(
            "The expiry year is too far in the future.",
            code="invalid_expiry_year",
            param="exp_year",
        )
    if (year, month) < (today.year, today.month):
        param = "exp_year" if year < today.year else "exp_month"
        raise CardValidationFailed("The card has expired.", code="expired_card", param=param)
    return month, year


# ------------------------------------------------------------- PAN-like content


def pan_like(text: str) -> bool:
    """Whether text holds a card number, however written (see :mod:`pandetect`)."""
    return holds_pan(text)


def redact_pans(text: str) -> str:
    """Text with every written number that holds a PAN replaced by ``[REDACTED_PAN]``."""
    return detect_redact_pans(text)
