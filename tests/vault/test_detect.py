"""The card-number detector: disguises it sees through, what it must leave alone, its cost."""

from __future__ import annotations

import re
import secrets
import sys
import unicodedata
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pandetect as detect
from pandetect import holds_pan, pan_spans, redact_pans
from tests.cards import luhn_complete, reference_luhn

PAN = "4242424242424242"

# ----------------------------------------------------------- a slow reference


def _invisible(char: str) -> bool:
    return ord(char) in {0x115F, 0x1160, 0x3164, 0xFFA0} or unicodedata.category(char) in {
        "Cf",
        "Mn",
        "Me",
    }


def _reference_signature(gap: str) -> frozenset[str]:
    compact = unicodedata.normalize("NFKC", "".join(c for c in gap if not c.isspace()))
    return frozenset(
        "-" if unicodedata.category(c) == "Pd" or c == "\u2212" else c for c in compact
    )


def _reference_numbers(text: str, *, hex_words: bool) -> list[tuple[list[str], list[str]]]:
    """Numbers as (groups of ASCII digits, gaps), read character by character."""
    chars = [c for c in text if not _invisible(c)]
    # Long hexadecimal words become letters.
    index = 0
    while hex_words and index < len(chars):
        if chars[index].isalnum():
            end = index
            while end < len(chars) and chars[end].isalnum():
                end += 1
            word = "".join(chars[index:end])
            if (
                len(word) >= 40
                and all(c in "0123456789abcdefABCDEF" for c in word)
                and not word.isdigit()
            ):
                chars[index:end] = ["x"] * len(word)
            index = end
        else:
            index += 1
    numbers: list[tuple[list[str], list[str]]] = []
    groups: list[str] = []
    gaps: list[str] = []
    pending = ""  # characters since the last digit group
    group = ""
    for char in [*chars, "\x00end"]:
        if len(char) == 1 and char.isdigit():
            if group:
                group += str(unicodedata.digit(char))
                continue
            if groups and 1 <= len(pending) <= 3 and not any(c.isalnum() for c in pending):
                gaps.append(pending)
            elif groups:
                numbers.append((groups, gaps))
                groups, gaps = [], []
            group = str(unicodedata.digit(char))
            pending = ""
        else:
            if group:
                groups.append(group)
                group = ""
            if len(char) == 1 and char.isalnum():
                # A letter ends the number.
                if groups:
                    numbers.append((groups, gaps))
                    groups, gaps = [], []
                pending = ""
            else:
                pending += char
    if groups:
        numbers.append((groups, gaps))
    return numbers


def reference_holds_pan(text: str, *, hex_words: bool = False) -> bool:
    """The detector's rules written plainly, with no care for cost."""
    for groups, gaps in _reference_numbers(text, hex_words=hex_words):
        if sum(map(len, groups)) < 13:
            continue
        if any(len(group) >= 20 for group in groups):
            return True
        for first in range(len(groups)):
            for last in range(first, len(groups)):
                signatures = {_reference_signature(gap) for gap in gaps[first:last]} - {frozenset()}
                digits = "".join(groups[first : last + 1])
                if len(signatures) <= 1 and 13 <= len(digits) <= 19 and reference_luhn(digits):
                    return True
    return False


# ------------------------------------------------------------------ the tables


def test_other_digits_table_matches_unicodedata() -> None:
    """The digit class is exactly the characters with a digit value (str.isdigit)."""
    digit = re.compile(detect._DIGIT)
    mismatched = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if bool(digit.fullmatch(chr(code))) != chr(code).isdigit()
    ]
    assert mismatched == []


# ------------------------------------------------------------- disguised PANs


@pytest.mark.parametrize(
    "text",
    [
        PAN,
        "4242 4242 4242 4242",
        "4242-4242-4242-4242",
        "4242.4242.4242.4242",
        "4242/4242/4242/4242",
        "4242_4242_4242_4242",
        "4242:4242:4242:4242",
        "4242,4242,4242,4242",
        "4242\t4242\t4242\t4242",
        "4242\n4242\n4242\n4242",
        "4242\u00a04242\u00a04242\u00a04242",  # no-break space
        "4242\u202f4242\u202f4242\u202f4242",  # narrow no-break space
        "4242\u200b4242\u200b4242\u200b4242",  # zero-width space
        "4\u200c2\u200d4\u20602\ufeff424242424242",  # joiners, word joiner, BOM
        "42\u00ad42424242424242",  # soft hyphen
        "4242\u20134242\u20134242\u20134242",  # en dash
        "4242 \u2014 4242 \u2014 4242 \u2014 4242",  # em dash with spaces
        "4242 - 4242 - 4242 - 4242",
        "4242. 4242. 4242. 4242",
        "4242 4242-4242 4242",  # whitespace mixes with any punctuation
        "\uff14\uff12\uff14\uff12\uff14\uff12\uff14\uff12\uff14\uff12\uff14\uff12\uff14\uff12\uff14\uff12",
        "\u0664\u0662\u0664\u0662\u0664\u0662\u0664\u0662\u0664\u0662\u0664\u0662\u0664\u0662\u0664\u0662",
        "\u096a\u0968\u096a\u0968\u096a\u0968\u096a\u0968\u096a\u0968\u096a\u0968\u096a\u0968\u096a\u0968",
        "\u2074\u00b2\u2074\u00b2\u2074\u00b2\u2074\u00b2\u2074\u00b2\u2074\u00b2\u2074\u00b2\u2074\u00b2",
        "4\u03012\u03014\u03012424242424242",  # combining marks
        "4 2 4 2 4 2 4 2 4 2 4 2 4 2 4 2",
        "card4242424242424242",
        "card: 4242 4242 4242 4242, thanks",
        "qty 2 4242 4242 4242 4242",
        "42424242424242421230",  # glued to an expiry
        "378282246310005",
        '"4242","4242","4242","4242"',
        "vtok_card_" + PAN + "A" * 16,
        "vtok_card_" + PAN * 2,
        "abc4242-4242-4242-4242def",
    ],
)
def test_disguised_pans_are_found(text: str) -> None:
    """A PAN split by any short run of separators, in any digits, is a PAN."""
    assert holds_pan(text)
    assert reference_holds_pan(text)
    redacted = redact_pans(text)
    assert "[REDACTED_PAN]" in redacted
    assert not any(c.isdigit() for c in redacted.replace("vtok_card_", ""))


# ----------------------------------------------------------- not card numbers


def _iso_now() -> str:
    return datetime.now(UTC).isoformat()


@pytest.mark.parametrize(
    "text",
    [
        "1234567812345678",  # a 16-digit id that fails Luhn
        "4242 4242 4242",  # too short
        "4242    4242    4242    4242",  # four spaces end a number
        "4242.4242-4242/4242",  # mixed punctuation: three numbers
        "2026-12-02T15:39:15.123456+00:00",
        "2026-12-02 15:39:15.123456",
        "2026-12-02 15:39:15,123",
        "15:39:15.123456789+01:00",
        "59.329345, 18.068581",
        "12.50, 8.99, 100.00, 45.25",
        "192.168.100.200, 192.168.100.201",
        "",
    ],
)
def test_not_card_numbers(text: str) -> None:
    """Timestamps, decimals, addresses and short or failing numbers are not PANs."""
    assert not holds_pan(text)
    assert not reference_holds_pan(text)
    assert redact_pans(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "customer:" + PAN + "ab" * 24,  # a blind index whose digits happen to pass Luhn
        "DEADBEEF" + PAN + "CAFE" * 4 + "0" * 8,
        "sha1 " + "f" * 24 + PAN,
    ],
)
def test_long_hex_words_are_hexadecimal_on_request(text: str) -> None:
    """With hex_words, digits inside a 40+ character hex word are hex digits, not a PAN."""
    assert not holds_pan(text, hex_words=True)
    assert not reference_holds_pan(text, hex_words=True)
    # Client input and log lines are read strictly: there the PAN counts.
    assert holds_pan(text)
    assert reference_holds_pan(text)


def test_shorter_hex_words_are_read_as_text() -> None:
    """A token-sized (32-character) hex-looking word is no hiding place, hex_words or not."""
    assert holds_pan("vtok_card_" + PAN + "abcdef0123456789", hex_words=True)
    assert holds_pan(PAN + "a" * 23, hex_words=True)


def test_random_identifiers_are_not_card_numbers() -> None:
    """Tokens, request ids, digests and timestamps the system makes are never flagged."""
    for _ in range(300):
        for value in (
            "vtok_card_" + secrets.token_urlsafe(24),
            "req_" + secrets.token_urlsafe(12),
            _iso_now(),
        ):
            assert not holds_pan(value), value
        for digest in (secrets.token_hex(20), "customer:" + secrets.token_hex(32)):
            assert not holds_pan(digest, hex_words=True), digest


def test_uuids_are_rarely_card_numbers() -> None:
    """A UUID is a PAN only when three of its groups are all digits and pass Luhn."""
    assert not holds_pan(str(uuid.UUID(int=0x1234567812345678ABCDEF0123456789)))
    assert holds_pan("42424242-4242-4242-abcd-ef0123456789")


# --------------------------------------------------------- property: embedded

luhn_pans = st.integers(min_value=12, max_value=18).flatmap(
    lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n).map(luhn_complete)
)
# Each separator run, as a writer might use it between groups.
_separators = st.sampled_from(
    [
        "",
        " ",
        "-",
        ".",
        "/",
        "_",
        ":",
        ",",
        "\t",
        "\n",
        "\u00a0",
        "\u2013",
        " - ",
        ", ",
        "\u200b",
        "\u200b\u200b",
        ". ",
    ]
)
_digit_sets = st.sampled_from(["0", "\uff10", "\u0660", "\u0966", "\U0001d7ce", "\u09e6"])
_edges = st.sampled_from([*"xyzXYZ!?;()[]{}\"'#=|~ \t\n", "", "card ", "PAN: "])
_filler = st.text(alphabet=st.characters(blacklist_categories=("Nd", "No", "Cs")), max_size=30)


def _written(pan: str, zero: str, sep: str, sizes: list[int]) -> str:
    digits = "".join(chr(ord(zero) + int(d)) for d in pan)
    groups = []
    index = 0
    for size in sizes:
        if index >= len(digits):
            break
        groups.append(digits[index : index + size])
        index += size
    if index < len(digits):
        groups.append(digits[index:])
    return sep.join(groups)


@given(
    pan=luhn_pans,
    zero=_digit_sets,
    sep=_separators,
    sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=19),
    context=st.tuples(_filler, _edges, _edges, _filler),
    hex_words=st.booleans(),
)
@example(
    pan=PAN, zero="0", sep="\u200b", sizes=[4, 4, 4, 4], context=("", "", "", ""), hex_words=True
)
def test_embedded_pans_are_always_found(
    pan: str,
    zero: str,
    sep: str,
    sizes: list[int],
    context: tuple[str, str, str, str],
    *,
    hex_words: bool,
) -> None:
    """A Luhn-valid 13-19 digit PAN in any digits, grouped any way with one separator, is found."""
    prefix, left, right, suffix = context
    text = prefix + " " + left + _written(pan, zero, sep, sizes) + right + " " + suffix
    assert holds_pan(text, hex_words=hex_words)
    redacted = redact_pans(text)
    assert pan not in "".join(str(unicodedata.digit(c)) for c in redacted if c.isdigit())


# ------------------------------------------------------- property: reference

_short_text = st.text(
    alphabet=st.sampled_from(
        list("0123456789" * 4)
        + list(" -.:/_,x a\t")
        + ["\u200b", "\u2013", "\uff14", "\u0662", "\u00a0", "\u0301", "\u2074"]
    ),
    max_size=48,
)


@settings(max_examples=400)
@given(_short_text, st.booleans())
def test_detector_equals_reference(text: str, hex_words: bool) -> None:
    """On random short texts the detector answers exactly as the plain reference does."""
    assert holds_pan(text, hex_words=hex_words) == reference_holds_pan(text, hex_words=hex_words)


@settings(max_examples=100)
@given(st.lists(_short_text, min_size=1, max_size=30).map(" x ".join), st.booleans())
def test_detector_equals_reference_on_longer_texts(text: str, hex_words: bool) -> None:
    """Longer texts of many candidate numbers agree with the reference as well."""
    assert holds_pan(text, hex_words=hex_words) == reference_holds_pan(text, hex_words=hex_words)


@settings(max_examples=200)
@given(st.text(alphabet=st.sampled_from([*"0123456789" * 3, *"abcdefABx -:"]), max_size=120))
def test_detector_equals_reference_around_hex_words(text: str) -> None:
    """Texts dense in hexadecimal words agree with the reference, both ways of reading."""
    for hex_words in (False, True):
        assert holds_pan(text, hex_words=hex_words) == reference_holds_pan(
            text, hex_words=hex_words
        )


@given(_short_text)
def test_spans_cover_exactly_the_numbers_holding_pans(text: str) -> None:
    """Redaction removes every number that holds a PAN and nothing else changes meaning."""
    redacted = redact_pans(text)
    assert not holds_pan(redacted.replace("[REDACTED_PAN]", " "))
    assert (redacted == text) == (not holds_pan(text))
    for start, end in pan_spans(text):
        assert holds_pan(text[start:end])
