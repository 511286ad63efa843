"""IBANs, no I/O: ISO 13616 shape, registry country and BBAN structure, mod-97 check, and
IBANs in free text.

The registry (countries, lengths, each country's BBAN structure) is python-stdnum's copy
of SWIFT's IBAN registry, maintained with it. stdnum's exceptions never leave this
module: each becomes one of our ValidationFailed codes with our own fixed text, so no
library message (or anything it might echo) reaches a response or a log.
"""

from __future__ import annotations

import re
import string
from typing import Final

from stdnum import iban as stdnum_iban
from stdnum import numdb
from stdnum.exceptions import InvalidChecksum, InvalidComponent, InvalidLength, ValidationError
from stdnum.iso7064 import mod_97_10

from proxy.domain.errors import InvalidRequest, ValidationFailed
from proxy.domain.hazmat import Iban

# -------------------------------------------------------------------------- IBAN

_STRUCTURE_PART: Final = re.compile(r"([1-9][0-9]*)!([nac])")


def _registry_lengths() -> dict[str, int]:
    """Each registry country's IBAN length, summed from its BBAN structure (e.g. 8!n10!n)."""
    registry = numdb.get("iban")
    lengths: dict[str, int] = {}
    for first in string.ascii_uppercase:
        for second in string.ascii_uppercase:
            country = first + second
            bban = registry.info(country)[0][1].get("bban")
            if bban:
                parts = _STRUCTURE_PART.findall(bban)
                lengths[country] = 4 + sum(int(count) for count, _ in parts)
    return lengths


# ISO 13616 lengths, from the registry stdnum ships (SWIFT's full-member countries).
IBAN_LENGTHS: Final[dict[str, int]] = _registry_lengths()

_IBAN_SHAPE_RE: Final = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{1,30}")


def iban_checksum_valid(iban: str) -> bool:
    """Whether a compact upper-case IBAN passes the ISO 7064 mod 97-10 check."""
    if not iban.isascii() or not iban.isalnum() or len(iban) < 5:
        return False
    return bool(mod_97_10.is_valid(iban[4:] + iban[:4]))


def _malformed() -> ValidationFailed:
    return ValidationFailed("The IBAN is malformed.", code="invalid_iban", param="iban")


def _wrong_length() -> ValidationFailed:
    return ValidationFailed(
        "The IBAN has the wrong length for its country.", code="invalid_iban_length", param="iban"
    )


def _unsupported() -> ValidationFailed:
    return ValidationFailed(
        "IBANs from this country are not supported.", code="unsupported_country", param="iban"
    )


def _bad_checksum() -> ValidationFailed:
    return ValidationFailed(
        "The IBAN check digits do not match.", code="invalid_iban_checksum", param="iban"
    )


def parse_iban(raw: object) -> Iban:
    """A validated IBAN (shape, registry country, length and BBAN structure, mod-97).

    The checks run in a fixed order, so one input always gets the same code: shape, then
    country, then length, then the check digits, then the country's BBAN structure (a
    letter where the registry says digits is ``invalid_iban``).
    """
    if not isinstance(raw, str):
        raise InvalidRequest("The IBAN must be a string.", code="invalid_type", param="iban")
    if len(raw) > 64:
        raise _malformed()
    compact = "".join(raw.split()).upper()
    if not compact.isascii() or _IBAN_SHAPE_RE.fullmatch(compact) is None:
        raise _malformed()
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is None:
        raise _unsupported()
    if len(compact) != expected:
        raise _wrong_length()
    if not iban_checksum_valid(compact):
        raise _bad_checksum()
    # check_country=False: stdnum's per-country modules also look banks up in registries
    # it bundles, which lag the real ones (they refuse the ECBS Belgian example IBAN).
    try:
        stdnum_iban.validate(compact, check_country=False)
    except InvalidChecksum:
        raise _bad_checksum() from None
    except InvalidComponent:
        raise _unsupported() from None
    except InvalidLength:
        raise _wrong_length() from None
    except ValidationError:
        raise _malformed() from None
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
