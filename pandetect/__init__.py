"""Card numbers (PANs) in free text: found in time linear in the text, however disguised.

A pure module (no I/O, nothing else of the project imported): the vault's audit trail,
the proxy's request validation and its log redaction all ask it the same question.

What counts as a card number written in text
============================================

- **Digits** are any Unicode digit (``str.isdigit``): ASCII, full-width, Arabic-Indic,
  Devanagari, mathematical, superscript, circled... each by its digit value.
- **Invisible characters** are ignored as if absent: format characters (zero-width
  spaces and joiners, soft hyphens, bidi controls, BOM), combining marks and the Hangul
  fillers. ``12<ZWSP>34`` is ``1234``.
- **Letters break a number**: a number is made of digit *groups* separated only by
  *gaps*, and a gap is a run of 1-3 characters that are neither letters nor digits
  (spaces, tabs, newlines, no-break spaces, dots, slashes, underscores, colons, commas,
  dashes of any kind, quotes...). A longer run ends the number. A group glued to a
  letter still counts (``card`` followed by a card number); the letter only ends the number.
- **One kind of punctuation per number**: whitespace may sit in any gap, but the other
  characters of the gaps must be the same throughout one number (``dddd.dddd.dddd.dddd``,
  ``dddd - dddd - dddd``, ``dddd:dddd dddd:dddd``). Mixing them (``2026-12-02 15:39:15.123``,
  ``59.329345, 18.068581``) starts a new number, which keeps timestamps, decimals and
  coordinates from being read as one long digit string.
- **Hexadecimal words**, on request (``hex_words=True``, for text the system writes
  itself such as the audit trail): a word of 40 or more characters made only of 0-9 and
  a-f/A-F, with at least one letter (SHA-1 and longer digests, HMACs, blind indexes), is
  read as hexadecimal, so its digits are not decimal groups. A random 64-character
  digest holds a Luhn-valid 13-19 digit stretch about once in 150. Shorter words (a
  token's 32 characters, UUID groups) are read like any other text. Client input and
  log lines are read without this rule: there a PAN hidden in a hex-looking word counts.

A text **holds a PAN** when some run of whole consecutive groups of one number has 13-19
digits in total and passes the Luhn check. A single group of 13-19 digits is checked
whole, so a 16-digit order id is not refused because some 13-digit stretch of it happens
to pass Luhn. A group of 20 or more digits is taken to hold one without looking: it may
be a PAN glued to its expiry or CVC, and nearly every such run has a Luhn-valid 13-19
digit stretch by chance anyway.

Cost: one regular-expression pass finds the candidate numbers (13 or more digits joined
by short gaps); each is checked with Luhn prefix sums compared for all stretch lengths at
once as big integers, a fixed number of passes over its digits. Work is linear in the
length of the text, with no per-character Python loop on the way.
"""

from __future__ import annotations

import re
import unicodedata
from itertools import accumulate, repeat
from operator import mod
from typing import Final

__all__ = ["PLACEHOLDER", "holds_pan", "may_hold_pan", "pan_spans", "redact_pans"]

PLACEHOLDER: Final = "[REDACTED_PAN]"

# Characters with a digit value that are not decimal digits (category No): superscripts,
# subscripts, circled and parenthesised digits. ``\d`` already matches every decimal
# digit (category Nd). tests/vault/test_detect.py checks this table against unicodedata.
_OTHER_DIGITS: Final = (
    "\u00b2\u00b3\u00b9\u1369-\u1371\u19da\u2070\u2074-\u2079\u2080-\u2089"
    "\u2460-\u2468\u2474-\u247c\u2488-\u2490\u24ea\u24f5-\u24fd\u24ff"
    "\u2776-\u277e\u2780-\u2788\u278a-\u2792"
    "\U00010a40-\U00010a43\U00010e60-\U00010e68\U00011052-\U0001105a"
    "\U0001f100-\U0001f10a"
)
_DIGIT: Final = rf"[\d{_OTHER_DIGITS}]"
MIN_DIGITS: Final = 13
MAX_DIGITS: Final = 19
_MAX_GAP: Final = 3
_HEX_WORD_MIN: Final = 40

# Necessary for a PAN: 13 digits somewhere. Anchored (match, not search), so one pass.
_ENOUGH_DIGITS: Final = re.compile(rf"(?:[^\d{_OTHER_DIGITS}]*{_DIGIT}){{{MIN_DIGITS}}}")
# A candidate number: digits joined by gaps of at most three non-alphanumerics, with at
# least 13 digits. Gap characters and digits are disjoint classes, so matching does not
# backtrack beyond one gap, and each number is tried from its first digit only.


def _number_pattern(digit: str, gap: str) -> re.Pattern[str]:
    return re.compile(
        # Only where a number begins (no digit, with or without a gap, right before it), so
        # a number too short to matter is tried once rather than from each of its digits.
        rf"(?<!{digit})(?<!{digit}{gap})(?<!{digit}{gap}{{2}})(?<!{digit}{gap}{{3}})"
        rf"{digit}(?:{gap}{{0,{_MAX_GAP}}}{digit}){{{MIN_DIGITS - 1},}}"
    )


_NUMBER: Final = _number_pattern(_DIGIT, r"[\W_]")
# The same on ASCII text, where simple classes match twice as fast.
_ASCII_NUMBER: Final = _number_pattern("[0-9]", "[^0-9A-Za-z]")
_HEX_WORD: Final = re.compile(rf"(?<![^\W_])[0-9A-Fa-f]{{{_HEX_WORD_MIN},}}(?![^\W_])")
_GAPS: Final = re.compile(r"([^0-9]+)")
_SPACE: Final = re.compile(r"\s+")
_IGNORABLE_CATEGORIES: Final = frozenset({"Cf", "Mn", "Me"})
# Default-ignorable letters: they render as nothing, so they must not split a number.
_IGNORABLE_LETTERS: Final = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0})
_DOUBLED: Final = bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9))
_VALUE: Final = bytes.maketrans(b"0123456789", bytes(range(10)))
_DOUBLE: Final = bytes.maketrans(b"0123456789", _DOUBLED)
_CACHE_LIMIT: Final = 4096
_MARK: Final = bytes(0 if 0x30 <= v <= 0x39 else 1 for v in range(256))
_NOT_DIGITS: Final = bytes(v for v in range(256) if not 0x30 <= v <= 0x39)
_LONG_GROUP: Final = re.compile(rb"[0-9]{%d}" % (MAX_DIGITS + 1))
# Digits and whitespace: what may appear in a number besides its one kind of punctuation.
_NEUTRAL: Final = frozenset("0123456789") | frozenset(
    chr(code) for code in range(0x3001) if chr(code).isspace()
)
# Bytes 16-25 (a residue at a boundary) back to 0-9; a residue elsewhere to a value
# that equals nothing on the other side.
_AS_START: Final = bytes(v - 16 if 16 <= v <= 25 else 0xAA for v in range(256))
_AS_END: Final = bytes(v - 16 if 16 <= v <= 25 else 0xBB for v in range(256))
# Ends whose last digit has even (odd) parity: odd (even) offsets.
_ALTERNATE: Final = (b"\x00\x01", b"\x01\x00")
_END_PAD: Final = b"\xbb" * MAX_DIGITS


class _Table(dict[int, int | None]):
    """A ``str.translate`` table that fills itself from unicodedata on first sight.

    The cache is bounded: an attacker sending every code point must not grow it forever.
    """

    def __missing__(self, code: int) -> int | None:
        value = self.compute(chr(code))
        if len(self) < _CACHE_LIMIT:
            self[code] = value
        return value

    def compute(self, char: str) -> int | None:  # pragma: no cover - overridden
        raise NotImplementedError


class _AsciiDigits(_Table):
    """Any digit to its ASCII digit; everything else unchanged."""

    def compute(self, char: str) -> int | None:
        value = unicodedata.digit(char, None)
        return ord(char) if value is None else 0x30 + value


class _Visible(_Table):
    """Invisible characters deleted; everything else unchanged."""

    def compute(self, char: str) -> int | None:
        code = ord(char)
        if code in _IGNORABLE_LETTERS or unicodedata.category(char) in _IGNORABLE_CATEGORIES:
            return None
        return code


_TO_ASCII: Final = _AsciiDigits()
_STRIP_INVISIBLE: Final = _Visible()


def _is_invisible(char: str) -> bool:
    return _STRIP_INVISIBLE[ord(char)] is None


def may_hold_pan(text: str) -> bool:
    """Cheap necessary condition: whether ``text`` has at least 13 digits."""
    if len(text) < MIN_DIGITS:
        return False
    if text.isascii():
        raw = text.encode("ascii")
        return len(raw) - len(raw.translate(None, b"0123456789")) >= MIN_DIGITS
    return _ENOUGH_DIGITS.match(text) is not None


def holds_pan(text: str, *, hex_words: bool = False) -> bool:
    """Whether ``text`` holds a card number as the module docstring defines it.

    ``hex_words`` reads long hexadecimal words as hexadecimal (see the module docstring).
    """
    if not may_hold_pan(text):
        return False
    visible = text if text.isascii() else text.translate(_STRIP_INVISIBLE)
    return bool(_numbers_with_pan(visible, hex_words=hex_words))


def pan_spans(text: str, *, hex_words: bool = False) -> list[tuple[int, int]]:
    """The ``(start, end)`` offsets in ``text`` of every written number that holds a PAN.

    A span covers the whole number as written (all its groups and the gaps between
    them, invisible characters included), so replacing it removes every digit.
    """
    if not may_hold_pan(text):
        return []
    if text.isascii() or len(text.translate(_STRIP_INVISIBLE)) == len(text):
        return _numbers_with_pan(text, hex_words=hex_words)
    # Offsets of the visible characters in text, to map spans back.
    origin = [i for i, char in enumerate(text) if not _is_invisible(char)]
    visible = "".join(text[i] for i in origin)
    return [
        (origin[start], origin[end - 1] + 1)
        for start, end in _numbers_with_pan(visible, hex_words=hex_words)
    ]


def redact_pans(text: str, placeholder: str = PLACEHOLDER) -> str:
    """``text`` with every written number that holds a PAN replaced by ``placeholder``."""
    spans = pan_spans(text)
    if not spans:
        return text
    parts = []
    last = 0
    for start, end in spans:
        parts.append(text[last:start])
        parts.append(placeholder)
        last = end
    parts.append(text[last:])
    return "".join(parts)


def _numbers_with_pan(visible: str, *, hex_words: bool) -> list[tuple[int, int]]:
    """Spans of the numbers in ``visible`` (no invisible characters) that hold a PAN."""
    numbers = _ASCII_NUMBER if visible.isascii() else _NUMBER
    found = [m.span() for m in numbers.finditer(visible) if _number_holds_pan(m.group())]
    # Reading long hexadecimal words as letters only ever removes numbers, so the text
    # is masked (and scanned again) only when the first scan found something.
    if (
        hex_words
        and found
        and len(visible) >= _HEX_WORD_MIN
        and _HEX_WORD.search(visible) is not None
    ):
        masked = _HEX_WORD.sub(_hex_as_letters, visible)
        found = [m.span() for m in numbers.finditer(masked) if _number_holds_pan(m.group())]
    return found


def _hex_as_letters(match: re.Match[str]) -> str:
    word = match.group()
    # All digits is a decimal number, not a hexadecimal word.
    return word if word.isdigit() else "x" * len(word)


def _number_holds_pan(number: str) -> bool:
    """Whether one candidate number (digits and short gaps, as matched) holds a PAN."""
    if not number.isascii():
        number = number.translate(_TO_ASCII)
    # One byte per character: digits as they are, other non-ASCII characters as "?"
    # (only digits and gap positions matter here; the gaps' text is read below).
    raw = number.encode("ascii", "replace")
    if _LONG_GROUP.search(raw) is not None:
        return True
    digits = raw.translate(None, _NOT_DIGITS)
    if len(digits) == len(raw):
        # One group of 13-19 digits (the common case): Luhn on the whole of it.
        return _luhn(digits)
    bounds = _boundaries(raw)
    punctuation = set(number) - _NEUTRAL
    if len(punctuation) <= 1:
        if len(digits) <= MAX_DIGITS:
            # At most 19 digits: few stretches (whole groups dropped from either end).
            return _short_number_holds_pan(digits, bounds)
        return _stretch_passes_luhn(digits, bounds)
    parts = _GAPS.split(number)
    ends = list(accumulate(map(len, parts[0::2])))
    starts = [0, *ends[:-1]]
    return any(
        _stretch_passes_luhn(
            digits[starts[first] : ends[last]], bounds[starts[first] : ends[last] + 1]
        )
        for first, last in _consistent_runs(parts[1::2])
        if ends[last] - starts[first] >= MIN_DIGITS
    )


def _short_number_holds_pan(digits: bytes, bounds: bytes) -> bool:
    """Whether some 13+ digit stretch of whole groups of a <= 19 digit number passes Luhn."""
    at = [offset for offset, flag in enumerate(bounds) if flag]
    for start in at:
        if len(digits) - start < MIN_DIGITS:
            break
        for end in reversed(at):
            if end - start < MIN_DIGITS:
                break
            if _luhn(digits[start:end]):
                return True
    return False


def _luhn(digits: bytes) -> bool:
    """Whether ASCII digits pass the Luhn check."""
    return (
        sum(digits[-1::-2].translate(_VALUE)) + sum(digits[-2::-2].translate(_DOUBLE))
    ) % 10 == 0


def _boundaries(raw: bytes) -> bytes:
    """Per digit offset (and one past the last), 1 where a group starts or ends."""
    # Each gap (1-3 characters) becomes one mark that takes the place of the digit after it.
    marks = raw.translate(_MARK).replace(b"\x01\x01\x01", b"\x01").replace(b"\x01\x01", b"\x01")
    return b"\x01" + marks.replace(b"\x01\x00", b"\x01")[1:] + b"\x01"


def _stretch_passes_luhn(digits: bytes, bounds: bytes) -> bool:
    """Whether ``digits[s:e]`` passes Luhn for some boundaries s < e, 13 <= e - s <= 19.

    ``bounds[i]`` is 1 where a group starts or ends (before digit i; one longer than
    ``digits``). Luhn via prefix sums: the stretch passes when the sums at its two ends
    agree mod 10. Which digits Luhn doubles depends on the parity of the end, so there
    are two sums and each end is compared in the one its parity selects. The comparisons
    run on whole byte strings as big integers (XOR, then a zero-byte test), a fixed
    number of passes over the digits instead of a Python loop per position.
    """
    size = len(digits) + 1
    values = digits.translate(_VALUE)
    doubled = digits.translate(_DOUBLE)
    bound_bits = int.from_bytes(bounds, "little") << 4
    ones = int.from_bytes(b"\x01" * size, "little")
    high_bits = ones << 7
    for parity in (0, 1):
        # Luhn doubles the digits whose parity differs from the last digit's (end - 1).
        weighted = bytearray(values)
        weighted[1 - parity :: 2] = doubled[1 - parity :: 2]
        residues = int.from_bytes(
            bytes(map(mod, accumulate(weighted, initial=0), repeat(10))), "little"
        )
        at_start = int.from_bytes(
            (residues + bound_bits).to_bytes(size, "little").translate(_AS_START), "little"
        )
        ends_here = bound_bits & (
            int.from_bytes(_ALTERNATE[parity] * (size // 2 + 1), "little") << 4
        )
        # Padded past the end so that shifting it down never brings in zero bytes.
        at_end = int.from_bytes(
            (residues + ends_here).to_bytes(size, "little").translate(_AS_END) + _END_PAD,
            "little",
        )
        for length in range(MIN_DIGITS, min(MAX_DIGITS, size - 1) + 1):
            # Byte i of ``both`` is zero where a stretch [i, i + length) passes.
            both = at_start ^ (at_end >> (8 * length))
            if (both - ones) & ~both & high_bits:
                return True
    return False


def _signature(gap: str) -> frozenset[str]:
    """What must match between the gaps of one number: the gap's non-space characters."""
    compact = unicodedata.normalize("NFKC", _SPACE.sub("", gap))
    return frozenset(
        "-" if unicodedata.category(c) == "Pd" or c == "\u2212" else c for c in compact
    )


def _consistent_runs(gaps: list[str]) -> list[tuple[int, int]]:
    """Maximal ``(first, last)`` group ranges whose gaps use one kind of punctuation.

    Gap ``i`` sits before group ``i + 1``. Neighbouring ranges share at most the groups
    between them that only whitespace joins, so each group is in at most two ranges.
    """
    distinct = set(gaps)
    if len(distinct) <= 1:
        return [(0, len(gaps))]
    signature = {gap: _signature(gap) for gap in distinct}
    if len({s for s in signature.values() if s}) <= 1:
        return [(0, len(gaps))]
    runs = []
    first = 0
    current: frozenset[str] | None = None
    after_last = 0  # the group after the latest gap with the current signature
    for index, gap in enumerate(gaps, start=1):
        sig = signature[gap]
        if not sig:
            continue
        if current is not None and sig != current:
            runs.append((first, index - 1))
            first = after_last
        current = sig
        after_last = index
    runs.append((first, len(gaps)))
    return runs
