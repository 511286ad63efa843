"""IBANs, no I/O: ISO 13616 shape, registry length, mod-97 check, and IBANs in free text."""

from __future__ import annotations

import re
from typing import Final

from proxy.domain.errors import InvalidRequest, ValidationFailed
from proxy.domain.hazmat import Iban

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
