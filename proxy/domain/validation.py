"""Request validation for card and bank data: pure functions, no I/O.

Every rule raises one of :mod:`proxy.domain.errors` with a stable ``code`` and the
``param`` it concerns. Messages are fixed text: a submitted value (or any part
of it) never appears in a message or a param, because error bodies are logged
and shown to browsers (ARCHITECTURE "Non-negotiable handling of card data").

Codes raised here:

- ``InvalidRequest`` (400): ``invalid_body``, ``unknown_field``, ``missing_field``,
  ``invalid_type``.
- ``CardValidationFailed`` (422, card_error): ``invalid_number``,
  ``unsupported_brand``, ``invalid_expiry_month``, ``invalid_expiry_year``,
  ``expired_card``, ``invalid_cvc``, ``invalid_holder_name``.
- ``ValidationFailed`` (422): ``invalid_customer_ref``, ``metadata_too_many_keys``,
  ``metadata_invalid_key``, ``metadata_forbidden_key``, ``metadata_value_too_long``,
  ``metadata_contains_card_number``, ``invalid_iban``, ``unsupported_country``,
  ``invalid_iban_length``, ``invalid_iban_checksum``, ``invalid_ocr_reference``,
  ``ocr_reference_card_like``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from typing import Final

from pandetect import holds_pan
from pandetect import redact_pans as detect_redact_pans
from proxy.domain.errors import CardValidationFailed, InvalidRequest, ValidationFailed
from proxy.domain.hazmat import CardNumber, Cvc, Iban

__all__ = [
    "IBAN_LENGTHS",
    "CardRequest",
    "brand_rules",
    "detect_brand",
    "expected_cvc_length",
    "iban_checksum_valid",
    "iban_like",
    "is_card_field_name",
    "luhn_valid",
    "mask_pan",
    "normalize_pan",
    "ocr_valid",
    "pan_like",
    "parse_card_request",
    "parse_expiry",
    "parse_iban",
    "redact_ibans",
    "redact_pans",
    "validate_customer_ref",
    "validate_metadata",
    "validate_ocr",
    "validate_return_url",
]

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


# -------------------------------------------------------------------------- IBAN

# ISO 13616 lengths from the SWIFT IBAN registry (full-member countries).
IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}  # fmt: skip

_IBAN_SHAPE_RE: Final = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{1,30}")


def iban_checksum_valid(iban: str) -> bool:
    """Whether a compact upper-case IBAN passes the ISO 7064 mod 97-10 check."""
    if not iban.isascii() or not iban.isalnum() or len(iban) < 5:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def parse_iban(raw: object) -> Iban:
    """A validated IBAN (shape, registry country and length, mod-97) from user input."""
    if not isinstance(raw, str):
        raise InvalidRequest("The IBAN must be a string.", code="invalid_type", param="iban")
    if len(raw) > 64:
        raise ValidationFailed("The IBAN is malformed.", code="invalid_iban", param="iban")
    compact = "".join(raw.split()).upper()
    if not compact.isascii() or _IBAN_SHAPE_RE.fullmatch(compact) is None:
        raise ValidationFailed("The IBAN is malformed.", code="invalid_iban", param="iban")
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is None:
        raise ValidationFailed(
            "IBANs from this country are not supported.", code="unsupported_country", param="iban"
        )
    if len(compact) != expected:
        raise ValidationFailed(
            "The IBAN has the wrong length for its country.",
            code="invalid_iban_length",
            param="iban",
        )
    if not iban_checksum_valid(compact):
        raise ValidationFailed(
            "The IBAN check digits do not match.", code="invalid_iban_checksum", param="iban"
        )
    return Iban(compact)


# Candidates: country, check digits, then alphanumerics optionally in space-
# separated blocks (the printed form). The exact end is settled per country.
_IBAN_CANDIDATE_RE: Final = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}"
)


def _iban_end(text: str, start: int, end: int) -> int | None:
    """End offset in text of a valid IBAN starting at start, within [start, end)."""
    candidate = text[start:end]
    compact = candidate.replace(" ", "").upper()
    length = IBAN_LENGTHS.get(compact[:2])
    if length is None:
        # Unknown country: only a whole, unspaced token counts, which keeps
        # false positives on random ids at the 1-in-97 checksum rate.
        if " " in candidate or not iban_checksum_valid(compact):
            return None
        return end
    if len(compact) < length or not iban_checksum_valid(compact[:length]):
        return None
    seen = 0
    for offset, char in enumerate(candidate):
        if char != " ":
            seen += 1
            if seen == length:
                stop = start + offset + 1
                # Must end at a token boundary, or a longer id would be cut.
                if stop < len(text) and text[stop].isascii() and text[stop].isalnum():
                    return None
                return stop
    return None  # pragma: no cover - len(compact) >= length guarantees a return


def iban_like(text: str) -> bool:
    """Whether ``text`` holds a mod-97-valid IBAN anywhere (compact or in printed blocks)."""
    return redact_ibans(text) != text


def redact_ibans(text: str) -> str:
    """Text with every mod-97-valid IBAN (compact or printed in blocks) replaced."""
    if len(text) < 15:
        return text
    parts: list[str] = []
    last = 0
    for match in _IBAN_CANDIDATE_RE.finditer(text):
        stop = _iban_end(text, match.start(), match.end())
        if stop is not None:
            parts.append(text[last : match.start()])
            parts.append("[REDACTED_IBAN]")
            last = stop
    if not parts:
        return text
    parts.append(text[last:])
    return "".join(parts)


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


# ---------------------------------------------------- metadata and references

_METADATA_MAX_KEYS: Final = 20
_METADATA_MAX_VALUE: Final = 500
_METADATA_KEY_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,40}")
# Key characters that can sit inside a written number: digits and the separators keys allow.
_JOINING: Final = frozenset("0123456789_.-")
_CUSTOMER_REF_RE: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
_SAFE_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_CAMEL_RE: Final = re.compile(r"([a-z0-9])([A-Z])")
_TOKEN_SPLIT_RE: Final = re.compile(r"[^a-z0-9]+")

_CARD_FIELD_TOKENS: Final = frozenset(
    {
        "pan", "cvc", "cvv", "cvn", "cvc2", "cvv2", "csc", "iban", "exp", "expiry",
        "expiration", "expmonth", "expyear", "cardnumber", "ccnumber", "ccnum",
        "pannumber", "securitycode",
    }
)  # fmt: skip
_NUMBER_OWNERS: Final = frozenset({"card", "cc", "credit", "debit", "account", "acct", "bank"})


def is_card_field_name(name: str) -> bool:
    """Whether a field name suggests card or bank data (``card_number``, ``cvc``, ``expMonth``)."""
    tokens = set(_TOKEN_SPLIT_RE.split(_CAMEL_RE.sub(r"\1_\2", name).lower())) - {""}
    if tokens & _CARD_FIELD_TOKENS:
        return True
    # Plain "number" or a card/account number; "order_number" is fine.
    return "number" in tokens and (tokens == {"number"} or bool(tokens & _NUMBER_OWNERS))


def _echoable(name: object) -> str | None:
    """A field name safe to return as ``param``, or None."""
    if not isinstance(name, str):
        return None
    # A key can itself be a PAN; a handful of digits is the most we echo.
    if _SAFE_NAME_RE.fullmatch(name) is None or sum(c.isdigit() for c in name) >= 6:
        return None
    return name[:40]


def validate_metadata(value: object) -> dict[str, str]:
    """Caller metadata as a flat dict of short strings without card data."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("metadata must be an object.", code="invalid_type", param="metadata")
    if len(value) > _METADATA_MAX_KEYS:
        raise ValidationFailed(
            f"metadata can have at most {_METADATA_MAX_KEYS} keys.",
            code="metadata_too_many_keys",
            param="metadata",
        )
    result: dict[str, str] = {}
    for key, item in value.items():
        # Keys are echoed to read clients just like values: a card number in a key is
        # refused as one, whatever else is wrong with the key.
        if isinstance(key, str) and pan_like(key):
            raise _metadata_card_number("metadata")
        if not isinstance(key, str) or _METADATA_KEY_RE.fullmatch(key) is None:
            raise ValidationFailed(
                "metadata keys must be 1-40 characters of letters, digits, '_', '.' or '-'.",
                code="metadata_invalid_key",
                param="metadata",
            )
        param = f"metadata.{_echoable(key)}" if _echoable(key) else "metadata"
        if is_card_field_name(key):
            raise ValidationFailed(
                "metadata keys must not name card or bank fields.",
                code="metadata_forbidden_key",
                param=param,
            )
        if not isinstance(item, str):
            raise InvalidRequest(
                "metadata values must be strings.", code="invalid_type", param=param
            )
        if len(item) > _METADATA_MAX_VALUE:
            raise ValidationFailed(
                f"metadata values can have at most {_METADATA_MAX_VALUE} characters.",
                code="metadata_value_too_long",
                param=param,
            )
        if pan_like(item):
            raise _metadata_card_number(param)
        if iban_like(item):
            raise ValidationFailed(
                "metadata must not contain bank account numbers.",
                code="metadata_contains_account_number",
                param=param,
            )
        result[key] = item
    # A number split across a key and its value, or a value and the next key, reads as
    # one in the JSON a read client gets back ("dddd":"dddd dddd dddd"). Only a key that
    # begins or ends with a digit or separator can join a number across entries.
    if any(key[0] in _JOINING or key[-1] in _JOINING for key in result) and pan_like(
        json.dumps(result, ensure_ascii=False, separators=(",", ":"))
    ):
        raise _metadata_card_number("metadata")
    return result


def _metadata_card_number(param: str) -> ValidationFailed:
    return ValidationFailed(
        "metadata must not contain card numbers.",
        code="metadata_contains_card_number",
        param=param,
    )


def validate_customer_ref(value: object) -> str | None:
    """The caller's customer reference: None or 1-64 characters of ``[A-Za-z0-9_.:@-]``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(
            "customer_ref must be a string.", code="invalid_type", param="customer_ref"
        )
    if _CUSTOMER_REF_RE.fullmatch(value) is None or pan_like(value) or iban_like(value):
        raise ValidationFailed(
            "customer_ref must be 1-64 characters of letters, digits, '_', '.', ':', '@' or '-'"
            " and must not be a card or account number.",
            code="invalid_customer_ref",
            param="customer_ref",
        )
    return value


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

    def __repr__(self) -> str:
        # Expiry is card data too, and the holder name is personal data.
        holder = None if self.holder_name is None else "***"
        return (
            f"CardRequest(number={self.number!r}, exp=**/**, cvc={self.cvc!r}, "
            f"brand={self.brand!r}, holder_name={holder!r}, "
            f"customer_ref={self.customer_ref!r}, metadata_keys={sorted(self.metadata)!r})"
        )

    __str__ = __repr__


_CARD_FIELDS: Final = frozenset(
    {
        "number",
        "exp_month",
        "exp_year",
        "cvc",
        "holder_name",
        "customer_ref",
        "metadata",
        "return_url",
    }
)
_MAX_URL = 2048


def validate_return_url(value: object) -> str | None:
    """An absolute http(s) URL the partner may send the shopper back to, or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(
            "return_url must be a string.", code="invalid_type", param="return_url"
        )
    # The partner puts it in a redirect: no controls, no card number typed in the wrong
    # field, and only web schemes (a javascript: URL would run in the checkout's page).
    if (
        len(value) > _MAX_URL
        or not value.isprintable()
        or " " in value
        or not re.match(r"https?://[^/?#\s]+", value)
        or pan_like(value)
    ):
        raise ValidationFailed(
            f"return_url must be an absolute http(s) URL of at most {_MAX_URL} characters.",
            code="invalid_return_url",
            param="return_url",
        )
    return value


_REQUIRED_CARD_FIELDS: Final = ("number", "exp_month", "exp_year", "cvc")


def _validate_holder_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(
            "holder_name must be a string.", code="invalid_type", param="holder_name"
        )
    name = value.strip()
    # Control characters would let a name forge log lines downstream.
    if len(name) > 100 or not name.isprintable() or pan_like(name):
        raise CardValidationFailed(
            "holder_name must be at most 100 printable characters and not a card number.",
            code="invalid_holder_name",
            param="holder_name",
        )
    return name or None


def parse_card_request(body: object, *, today: date) -> CardRequest:
    """Validate a card tokenization body: structure, then number, expiry and cvc.

    A number that passes Luhn but starts with no known IIN range is refused as
    ``unsupported_brand`` (we cannot pick the CVC length or tell the shopper what
    we accept); one of a known range with the wrong length is ``invalid_number``.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    for key in body:
        if key not in _CARD_FIELDS:
            raise InvalidRequest("Unknown field.", code="unknown_field", param=_echoable(key))
    for field in _REQUIRED_CARD_FIELDS:
        if body.get(field) is None:
            raise InvalidRequest(f"{field} is required.", code="missing_field", param=field)
    raw_number, raw_cvc = body["number"], body["cvc"]
    # Numbers as JSON numbers lose leading zeros and are easy to log by accident.
    if not isinstance(raw_number, str):
        raise InvalidRequest("number must be a string.", code="invalid_type", param="number")
    if not isinstance(raw_cvc, str):
        raise InvalidRequest("cvc must be a string.", code="invalid_type", param="cvc")

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

    exp_month, exp_year = parse_expiry(body["exp_month"], body["exp_year"], today=today)

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
        holder_name=_validate_holder_name(body.get("holder_name")),
        customer_ref=validate_customer_ref(body.get("customer_ref")),
        metadata=validate_metadata(body.get("metadata")),
        return_url=validate_return_url(body.get("return_url")),
    )
