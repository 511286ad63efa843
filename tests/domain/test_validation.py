"""Card, IBAN, OCR and metadata validation rules, and the hazmat wrapper types."""

from __future__ import annotations

import copy
import json
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.domain.card import (
    detect_brand,
    expected_cvc_length,
    luhn_valid,
    mask_pan,
    normalize_pan,
    pan_like,
    parse_expiry,
    redact_pans,
)
from proxy.domain.errors import CardValidationFailed, InvalidRequest, ProxyError, ValidationFailed
from proxy.domain.fields import validate_customer_ref, validate_metadata
from proxy.domain.hazmat import CardNumber, Cvc, Iban
from proxy.domain.iban import iban_checksum_valid, parse_iban
from proxy.domain.invoice import ocr_valid, validate_ocr
from proxy.domain.requests import CardRequest, parse_card_request
from tests.cards import luhn_complete, reference_luhn
from tests.ibans import with_check_digits

TODAY = date(2026, 5, 15)
DIGITS = "0123456789"

TEST_PANS = [
    ("4242424242424242", "visa"),
    ("4000056655665556", "visa"),
    ("5555555555554444", "mastercard"),
    ("2223003122003222", "mastercard"),
    ("378282246310005", "amex"),
    ("6011111111111117", "discover"),
    ("3056930009020004", "diners"),
    ("36227206271667", "diners"),
    ("3566002020360505", "jcb"),
    ("6200000000000005", "unionpay"),
    ("6759649826438453", "maestro"),
]


# ----------------------------------------------------------------- helpers


@contextmanager
def raises_safely(
    exc_type: type[ProxyError], code: str, *secrets: str
) -> Iterator[pytest.ExceptionInfo[ProxyError]]:
    """Expect exc_type with code, and check no submitted secret leaks into it."""
    with pytest.raises(exc_type) as info:
        yield info
    err = info.value
    assert type(err) is exc_type
    assert err.code == code
    rendered = " ".join(
        [err.message, str(err), repr(err.args), err.param or "", json.dumps(err.body("req_t"))]
    )
    for secret in filter(None, secrets):
        digits = re.sub(r"\D", "", secret)
        assert secret not in rendered
        assert not digits or digits not in rendered
        # Not even a part: no four consecutive digits of a longer number.
        if len(digits) > 4:
            for start in range(len(digits) - 3):
                assert digits[start : start + 4] not in rendered


def card_body(**overrides: Any) -> dict[str, Any]:
    """A valid card request body, with fields replaced or (when None) removed."""
    body: dict[str, Any] = {
        "number": "4242424242424242",
        "exp_month": 12,
        "exp_year": 2030,
        "cvc": "987",
    }
    for key, value in overrides.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


luhn_pans = st.integers(min_value=12, max_value=18).flatmap(
    lambda n: st.text(DIGITS, min_size=n, max_size=n).map(luhn_complete)
)


# ------------------------------------------------------------------- Luhn


@pytest.mark.parametrize(("pan", "brand"), TEST_PANS)
def test_test_pans_are_luhn_valid(pan: str, brand: str) -> None:
    """Every test PAN passes both the reference and the production Luhn check."""
    assert reference_luhn(pan)
    assert luhn_valid(pan)


def test_luhn_rejects_non_digits_and_empty() -> None:
    """Empty strings, letters and non-ASCII digits are never Luhn-valid."""
    assert not luhn_valid("")
    assert not luhn_valid("4242a24242424242")
    assert not luhn_valid("٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢")


@given(st.text(DIGITS, min_size=1, max_size=30), st.data())
def test_luhn_check_digit_property(payload: str, data: st.DataObject) -> None:
    """The right check digit makes any payload valid; any single-digit change breaks it."""
    number = luhn_complete(payload)
    assert luhn_valid(number)
    index = data.draw(st.integers(0, len(number) - 1))
    replacement = data.draw(st.sampled_from([d for d in DIGITS if d != number[index]]))
    assert not luhn_valid(number[:index] + replacement + number[index + 1 :])


# ----------------------------------------------------------------- brands


@pytest.mark.parametrize(("pan", "brand"), TEST_PANS)
def test_detect_brand_for_test_pans(pan: str, brand: str) -> None:
    """Each partner test PAN is detected as its brand."""
    assert detect_brand(pan) == brand


def test_detect_brand_prefers_unionpay_for_shared_range() -> None:
    """622126-622925 (Discover/UnionPay shared) is unionpay, as the partner reports it."""
    assert detect_brand(luhn_complete("622126000000000")) == "unionpay"


def test_detect_brand_needs_brand_length() -> None:
    """A known prefix with a length the brand does not issue is no brand."""
    assert detect_brand(luhn_complete("42424242424242")) is None  # visa, 15 digits
    assert detect_brand(luhn_complete("3782822463100")) is None  # amex, 14 digits


def test_detect_brand_unknown_prefix() -> None:
    """Numbers in no listed IIN range have no brand."""
    assert detect_brand(luhn_complete("999999999999999")) is None


@given(st.text(DIGITS, max_size=25) | st.text(max_size=25))
def test_detect_brand_is_total(text: str) -> None:
    """detect_brand never raises, whatever it is given."""
    assert detect_brand(text) in {None, *dict(TEST_PANS).values()}


def test_expected_cvc_length() -> None:
    """Amex codes have four digits, every other brand three."""
    assert expected_cvc_length("amex") == 4
    assert expected_cvc_length("visa") == 3
    assert expected_cvc_length("mastercard") == 3


# ---------------------------------------------------------------- masking


def test_mask_pan_rules() -> None:
    """16+ and 14-15 digits show first six and last four; shorter shows last four only."""
    assert mask_pan("4242424242424242") == "424242******4242"
    assert mask_pan("378282246310005") == "378282*****0005"
    assert mask_pan("36227206271667") == "362272****1667"
    assert mask_pan("4222222222222") == "*********2222"
    assert mask_pan("1234") == "****"


@given(st.text(DIGITS, min_size=1, max_size=19))
def test_mask_pan_never_reveals_more_than_allowed(digits: str) -> None:
    """Masking keeps the length and reveals at most first six + last four (last four under 14)."""
    masked = mask_pan(digits)
    n = len(digits)
    assert len(masked) == n
    allowed = set(range(n - 4, n)) if n > 4 else set()
    if n >= 14:
        allowed |= set(range(6))
    for index, char in enumerate(masked):
        if index in allowed:
            assert char == digits[index]
        else:
            assert char == "*"


# ------------------------------------------------------------- normalize


def test_normalize_pan_strips_spaces_and_dashes() -> None:
    """Spaces and dashes people type between digit groups are removed."""
    assert normalize_pan("4242 4242-4242 4242") == "4242424242424242"


@pytest.mark.parametrize(
    "raw", ["4242x24242424242", "4242.4242.4242.4242", "4242424242424²42", "", "1" * 11, "1" * 20]
)
def test_normalize_pan_rejects_bad_shapes(raw: str) -> None:
    """Non-digits and lengths outside 12-19 are invalid_number."""
    with raises_safely(CardValidationFailed, "invalid_number", raw) as info:
        normalize_pan(raw)
    assert info.value.param == "number"


def test_normalize_pan_rejects_huge_input() -> None:
    """A very long string is refused before any copy is made."""
    with raises_safely(CardValidationFailed, "invalid_number"):
        normalize_pan(" " * 10_000 + "4242424242424242")


# ---------------------------------------------------------------- expiry


def test_expiry_current_month_is_valid() -> None:
    """A card is valid through the end of its expiry month."""
    assert parse_expiry(5, 2026, today=TODAY) == (5, 2026)


def test_expiry_last_month_is_expired() -> None:
    """The month before today's has passed."""
    with raises_safely(CardValidationFailed, "expired_card") as info:
        parse_expiry(4, 2026, today=TODAY)
    assert info.value.param == "exp_month"


def test_expiry_last_year_is_expired() -> None:
    """A past year is expired and points at exp_year."""
    with raises_safely(CardValidationFailed, "expired_card") as info:
        parse_expiry(12, 2025, today=TODAY)
    assert info.value.param == "exp_year"


@pytest.mark.parametrize("month", [0, 13, -1, "0", "13", "123", "", "1a", True, False, 1.0, None])
def test_expiry_bad_month(month: object) -> None:
    """Months outside 1-12, non-digit strings, floats and booleans are refused."""
    with raises_safely(CardValidationFailed, "invalid_expiry_month") as info:
        parse_expiry(month, 2030, today=TODAY)
    assert info.value.param == "exp_month"


def test_expiry_accepts_digit_strings_and_two_digit_years() -> None:
    """Month strings of 1-2 digits and two-digit years (20yy) are accepted."""
    assert parse_expiry("07", "30", today=TODAY) == (7, 2030)
    assert parse_expiry("7", 30, today=TODAY) == (7, 2030)
    assert parse_expiry(7, "2030", today=TODAY) == (7, 2030)


@pytest.mark.parametrize("year", ["203", "20300", 203, 20300, True, "3x", -5, None])
def test_expiry_bad_year(year: object) -> None:
    """Years that are not two or four digits (or are booleans) are refused."""
    with raises_safely(CardValidationFailed, "invalid_expiry_year") as info:
        parse_expiry(12, year, today=TODAY)
    assert info.value.param == "exp_year"


def test_expiry_too_far_ahead() -> None:
    """Years more than 50 years ahead are typos, not cards."""
    assert parse_expiry(1, 2076, today=TODAY) == (1, 2076)
    with raises_safely(CardValidationFailed, "invalid_expiry_year"):
        parse_expiry(1, 2077, today=TODAY)


# -------------------------------------------------------------- card body


@pytest.mark.parametrize(("pan", "brand"), TEST_PANS)
def test_parse_card_request_accepts_each_brand(pan: str, brand: str) -> None:
    """Each test PAN with a CVC of its brand's length parses to that brand."""
    cvc = "9876" if brand == "amex" else "987"
    request = parse_card_request(card_body(number=pan, cvc=cvc), today=TODAY)
    assert request.number.digits == pan
    assert request.brand == brand
    assert request.cvc.value == cvc
    assert (request.exp_month, request.exp_year) == (12, 2030)
    assert request.metadata == {}


def test_parse_card_request_full_body() -> None:
    """Optional fields are validated and carried; the number is normalized."""
    request = parse_card_request(
        card_body(
            number="4242-4242-4242-4242",
            holder_name="  Ada Lovelace ",
            customer_ref="cus_42@shop",
            metadata={"order_id": "A-1"},
        ),
        today=TODAY,
    )
    assert request.number == CardNumber("4242424242424242")
    assert request.holder_name == "Ada Lovelace"
    assert request.customer_ref == "cus_42@shop"
    assert request.metadata == {"order_id": "A-1"}


@pytest.mark.parametrize("body", [None, [], "x", 42])
def test_body_must_be_object(body: object) -> None:
    """Anything but a JSON object is invalid_body."""
    with raises_safely(InvalidRequest, "invalid_body"):
        parse_card_request(body, today=TODAY)


def test_unknown_field_is_named() -> None:
    """An unknown key is refused and named in param."""
    with raises_safely(InvalidRequest, "unknown_field", "4242424242424242", "987") as info:
        parse_card_request(card_body(cvv="987"), today=TODAY)
    assert info.value.param == "cvv"


@pytest.mark.parametrize("key", ["4242424242424242", "bad key!", "x" * 41 + "\n", "ab\u00e9"])
def test_unknown_field_param_never_echoes_unsafe_keys(key: str) -> None:
    """Keys that could carry data or are not plain names are not echoed."""
    with raises_safely(InvalidRequest, "unknown_field", "4242424242424242") as info:
        parse_card_request(card_body(**{key: "1"}), today=TODAY)
    assert info.value.param is None


def test_unknown_field_param_is_capped() -> None:
    """A long but plain unknown key is echoed cut to 40 characters."""
    with raises_safely(InvalidRequest, "unknown_field") as info:
        parse_card_request(card_body(**{"a" * 100: "1"}), today=TODAY)
    assert info.value.param == "a" * 40


@pytest.mark.parametrize("field", ["number", "exp_month", "exp_year", "cvc"])
def test_missing_required_field(field: str) -> None:
    """Each required field missing (or null) is missing_field with its name."""
    with raises_safely(InvalidRequest, "missing_field", "4242424242424242", "987") as info:
        parse_card_request(card_body(**{field: None}), today=TODAY)
    assert info.value.param == field


def test_number_as_int_is_invalid_type() -> None:
    """A JSON number for the PAN is refused: it loses leading zeros and invites logging."""
    with raises_safely(InvalidRequest, "invalid_type", "4242424242424242") as info:
        parse_card_request(card_body(number=4242424242424242), today=TODAY)
    assert info.value.param == "number"


def test_cvc_as_int_is_invalid_type() -> None:
    """A JSON number for the CVC is refused (leading zeros)."""
    with raises_safely(InvalidRequest, "invalid_type", "987") as info:
        parse_card_request(card_body(cvc=987), today=TODAY)
    assert info.value.param == "cvc"


def test_luhn_failure_is_invalid_number() -> None:
    """A number failing Luhn is invalid_number."""
    with raises_safely(CardValidationFailed, "invalid_number", "4242424242424241") as info:
        parse_card_request(card_body(number="4242424242424241"), today=TODAY)
    assert info.value.param == "number"


def test_known_prefix_wrong_length_is_invalid_number() -> None:
    """A Luhn-valid visa-prefixed 15-digit number is invalid, not an unknown brand."""
    pan = luhn_complete("42424242424242")
    with raises_safely(CardValidationFailed, "invalid_number", pan):
        parse_card_request(card_body(number=pan), today=TODAY)


def test_unsupported_brand() -> None:
    """A Luhn-valid number in no known IIN range is unsupported_brand."""
    pan = luhn_complete("999999999999999")
    with raises_safely(CardValidationFailed, "unsupported_brand", pan) as info:
        parse_card_request(card_body(number=pan), today=TODAY)
    assert info.value.param == "number"


@pytest.mark.parametrize(
    ("number", "cvc"),
    [
        ("4242424242424242", "9876"),
        ("4242424242424242", "98"),
        ("4242424242424242", "98a"),
        ("4242424242424242", ""),
        ("378282246310005", "987"),
        ("378282246310005", "98765"),
    ],
)
def test_cvc_wrong_length_or_shape(number: str, cvc: str) -> None:
    """The CVC must be digits of the brand's length (4 amex, 3 others)."""
    with raises_safely(CardValidationFailed, "invalid_cvc", number, cvc) as e:
        parse_card_request(card_body(number=number, cvc=cvc), today=TODAY)
    assert e.value.param == "cvc"


def test_check_order_number_before_expiry_before_cvc() -> None:
    """With several bad fields the number is reported first, then expiry, then cvc."""
    with raises_safely(CardValidationFailed, "invalid_number"):
        parse_card_request(card_body(number="4242424242424241", exp_month=13, cvc="1"), today=TODAY)
    with raises_safely(CardValidationFailed, "invalid_expiry_month"):
        parse_card_request(card_body(exp_month=13, cvc="1"), today=TODAY)


def test_structure_checked_before_values() -> None:
    """An unknown field is reported even when the number is also bad."""
    with raises_safely(InvalidRequest, "unknown_field", "4242424242424241"):
        parse_card_request(card_body(number="4242424242424241", extra="1"), today=TODAY)


def test_expired_card_in_body() -> None:
    """An expired card is refused after the number checks pass."""
    with raises_safely(CardValidationFailed, "expired_card", "4242424242424242", "987"):
        parse_card_request(card_body(exp_month=1, exp_year=26), today=TODAY)


@pytest.mark.parametrize(
    ("holder_name", "exc", "code"),
    [
        ("x" * 101, CardValidationFailed, "invalid_holder_name"),
        ("Ada 4242 4242 4242 4242", CardValidationFailed, "invalid_holder_name"),
        ("Ada\nLovelace", CardValidationFailed, "invalid_holder_name"),
        (42, InvalidRequest, "invalid_type"),
    ],
)
def test_bad_holder_name(holder_name: object, exc: type[ProxyError], code: str) -> None:
    """Holder names are short printable strings without card numbers."""
    with raises_safely(exc, code, "4242424242424242") as info:
        parse_card_request(card_body(holder_name=holder_name), today=TODAY)
    assert info.value.param == "holder_name"


# ------------------------------------------------- customer ref and metadata


def test_customer_ref_rules() -> None:
    """customer_ref is None or 1-64 characters of the allowed set, and no PAN."""
    assert validate_customer_ref(None) is None
    assert validate_customer_ref("cus_1:a@b.c-d") == "cus_1:a@b.c-d"
    for bad in ["", "x" * 65, "has space", "4242424242424242"]:
        with raises_safely(ValidationFailed, "invalid_customer_ref", "4242424242424242"):
            validate_customer_ref(bad)
    with raises_safely(InvalidRequest, "invalid_type"):
        validate_customer_ref(42)


def test_metadata_none_is_empty() -> None:
    """Absent metadata is an empty dict."""
    assert validate_metadata(None) == {}


def test_metadata_valid() -> None:
    """Flat string metadata with plain keys, including order_number, is accepted."""
    value = {"order_id": "A-1", "order_number": "1234567812345678", "k.v-1": ""}
    assert validate_metadata(value) == value


@pytest.mark.parametrize("value", [[], "x", 1])
def test_metadata_must_be_object(value: object) -> None:
    """metadata that is not an object is invalid_type."""
    with raises_safely(InvalidRequest, "invalid_type") as info:
        validate_metadata(value)
    assert info.value.param == "metadata"


@pytest.mark.parametrize("item", [{"a": "b"}, ["a"], 1, True, None])
def test_metadata_nested_or_non_string_rejected(item: object) -> None:
    """Values must be strings: nested objects, lists, numbers and booleans are refused."""
    with raises_safely(InvalidRequest, "invalid_type") as info:
        validate_metadata({"order_id": item})
    assert info.value.param == "metadata.order_id"


def test_metadata_too_many_keys() -> None:
    """At most 20 keys."""
    assert len(validate_metadata({f"k{i}": "v" for i in range(20)})) == 20
    with raises_safely(ValidationFailed, "metadata_too_many_keys"):
        validate_metadata({f"k{i}": "v" for i in range(21)})


def test_metadata_long_value() -> None:
    """Values longer than 500 characters are refused."""
    assert validate_metadata({"a": "x" * 500}) == {"a": "x" * 500}
    with raises_safely(ValidationFailed, "metadata_value_too_long") as info:
        validate_metadata({"a": "x" * 501})
    assert info.value.param == "metadata.a"


@pytest.mark.parametrize("key", ["", "x" * 41, "bad key", "ключ", "a/b"])
def test_metadata_bad_key(key: str) -> None:
    """Keys are 1-40 characters of letters, digits, '_', '.', '-'; the key is not echoed."""
    with raises_safely(ValidationFailed, "metadata_invalid_key") as info:
        validate_metadata({key: "v"})
    assert info.value.param == "metadata"


@pytest.mark.parametrize(
    "value",
    [
        "4242424242424242",
        "card 4242 4242 4242 4242 thanks",
        "ref:5555-5555-5555-4444",
        "x378282246310005y",
    ],
)
def test_metadata_pan_value_rejected(value: str) -> None:
    """Values containing a Luhn-valid 13-19 digit number (spaced or not) are refused."""
    with raises_safely(
        ValidationFailed, "metadata_contains_card_number", value, re.sub(r"\D", "", value)
    ) as info:
        validate_metadata({"note": value})
    assert info.value.param == "metadata.note"


def test_metadata_pan_key_rejected() -> None:
    """A PAN used as a key is refused without being echoed."""
    with raises_safely(ValidationFailed, "metadata_contains_card_number", "4242424242424242") as e:
        validate_metadata({"4242424242424242": "v"})
    assert e.value.param == "metadata"


@pytest.mark.parametrize(
    "key", ["number", "pan", "cvc", "cvv", "iban", "exp", "exp_month", "card_number", "expYear"]
)
def test_metadata_forbidden_key(key: str) -> None:
    """Keys named like card or bank fields are refused."""
    with raises_safely(ValidationFailed, "metadata_forbidden_key") as info:
        validate_metadata({key: "v"})
    assert info.value.param == f"metadata.{key}"


# ------------------------------------------------------------------ pan_like


def test_pan_like_examples() -> None:
    """PANs are found plain, spaced, dashed and glued to letters; ids and short runs are not."""
    assert pan_like("4242424242424242")
    assert pan_like("x 4242 4242 4242 4242 y")
    assert pan_like("abc4242-4242-4242-4242def")
    assert pan_like("qty 2 4242 4242 4242 4242")
    assert pan_like("42424242424242421230")  # PAN glued to an expiry
    assert not pan_like("1234567812345678")
    assert not pan_like("4242 4242 4242")
    assert pan_like("4242  4242  4242  4242")  # any run of up to three separators joins
    assert not pan_like("4242    4242    4242    4242")  # four end the number
    assert not pan_like("")


def test_redact_pans_keeps_other_text() -> None:
    """Only the PAN group is replaced; surrounding text and non-Luhn ids stay."""
    assert (
        redact_pans("card 4242 4242 4242 4242, order 1234567812345678")
        == "card [REDACTED_PAN], order 1234567812345678"
    )


_boundary = st.sampled_from(list("abcXYZ,;:!()[]{}/_=#\"'\t\n"))


def _grouped(pan: str, sep: str) -> str:
    return sep.join(pan[i : i + 4] for i in range(0, len(pan), 4)) if sep else pan


@given(
    luhn_pans,
    st.text(max_size=40),
    st.text(max_size=40),
    st.tuples(_boundary, _boundary),
    st.sampled_from(["", " ", "-"]),
)
def test_pan_like_finds_embedded_pans(
    pan: str, prefix: str, suffix: str, edges: tuple[str, str], sep: str
) -> None:
    """A Luhn-valid 13-19 digit PAN anywhere in random text, set off by a non-digit, is found."""
    left, right = edges
    text = prefix + left + _grouped(pan, sep) + right + suffix
    assert pan_like(text)
    assert pan not in redact_pans(text).replace(" ", "").replace("-", "")


# ---------------------------------------------------------------------- IBAN


@pytest.mark.parametrize(
    "iban",
    [
        "SE4550000000058398257466",
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "NL91ABNA0417164300",
        "FR1420041010050500013M02606",
        "NO9386011117947",
    ],
)
def test_parse_iban_valid(iban: str) -> None:
    """Registry-conformant IBANs parse, also lowercase and printed in blocks."""
    assert parse_iban(iban).value == iban
    spaced = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)).lower()
    assert parse_iban(spaced).value == iban


def test_parse_iban_wrong_checksum() -> None:
    """A changed digit breaks the mod-97 check."""
    with raises_safely(ValidationFailed, "invalid_iban_checksum", "DE89370400440532013001") as e:
        parse_iban("DE89370400440532013001")
    assert e.value.param == "iban"


def test_parse_iban_wrong_length() -> None:
    """An IBAN one character short for its country is invalid_iban_length."""
    with raises_safely(ValidationFailed, "invalid_iban_length", "DE8937040044053201300"):
        parse_iban("DE8937040044053201300")


def test_parse_iban_unknown_country() -> None:
    """Countries outside the registry are unsupported_country."""
    with raises_safely(ValidationFailed, "unsupported_country"):
        parse_iban("ZZ89370400440532013000")


@pytest.mark.parametrize(
    "raw", ["", "DE", "1289370400440532013000", "DE8X370400440532013000", "DE89-3704"]
)
def test_parse_iban_bad_shape(raw: str) -> None:
    """Anything not two letters, two digits and alphanumerics is invalid_iban."""
    with raises_safely(ValidationFailed, "invalid_iban"):
        parse_iban(raw)


def test_parse_iban_refuses_letters_where_the_registry_says_digits() -> None:
    """A German BBAN is all digits: a letter in it is invalid_iban, even with valid check digits."""
    iban = with_check_digits("DE", "37040044053201300A")
    assert iban_checksum_valid(iban)
    with raises_safely(ValidationFailed, "invalid_iban", iban):
        parse_iban(iban)


@given(
    st.one_of(
        st.text(max_size=80),
        st.from_regex(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{8,30}", fullmatch=True),
        st.builds(
            with_check_digits,
            st.sampled_from(["DE", "GB", "NL", "FR", "SE", "ZZ"]),
            st.from_regex(r"[A-Z0-9]{10,26}", fullmatch=True),
        ),
    )
)
def test_iban_errors_never_echo_the_input(raw: str) -> None:
    """Whatever is refused, the error's message, args and body hold none of the input."""
    try:
        parse_iban(raw)
    except ProxyError as err:
        rendered = " ".join(
            [err.message, str(err), repr(err.args), err.param or "", json.dumps(err.body("req_t"))]
        )
        compact = "".join(raw.split())
        if len(compact) >= 6:
            assert compact not in rendered
            assert compact.upper() not in rendered
        assert not re.search(r"\d{4}", rendered)


def test_parse_iban_non_string() -> None:
    """A non-string IBAN is invalid_type."""
    with raises_safely(InvalidRequest, "invalid_type"):
        parse_iban(1234)


# ----------------------------------------------------------------------- OCR


def test_ocr_valid_examples() -> None:
    """Luhn check digit last; optional length digit second to last."""
    assert reference_luhn("1234567897")
    assert ocr_valid("1234567897")
    assert not ocr_valid("1234567898")
    assert ocr_valid("18")  # shortest: one payload digit and its check digit
    assert not ocr_valid("8")
    assert not ocr_valid(luhn_complete("1" * 25))  # 26 digits
    # "12345" + length digit 7 (seven digits in all) + check digit 4.
    assert reference_luhn("1234574")
    assert ocr_valid("1234574", length_digit=True)
    assert not ocr_valid("1234567897", length_digit=True)


def test_validate_ocr() -> None:
    """References with or without a length digit are accepted, spaces removed."""
    assert validate_ocr("1234 5678 97") == "1234567897"
    assert validate_ocr("1234574") == "1234574"
    with raises_safely(ValidationFailed, "invalid_ocr_reference"):
        validate_ocr("1234567898")
    with raises_safely(ValidationFailed, "invalid_ocr_reference"):
        validate_ocr("12a4")
    with raises_safely(InvalidRequest, "invalid_type"):
        validate_ocr(1234567897)


# --------------------------------------------------------------------- hazmat


def _digits_in(text: str) -> str:
    return re.sub(r"\D", "", text)


@given(luhn_pans)
def test_card_number_text_forms_redact(pan: str) -> None:
    """CardNumber's text forms show only first six + last four (last four when short)."""
    card = CardNumber(pan)
    expected = pan[:6] + pan[-4:] if len(pan) >= 14 else pan[-4:]
    for text in (repr(card), str(card), f"{card}", f"{card:>40}", "%s" % (card,)):  # noqa: UP031
        assert _digits_in(text) == expected
        assert pan not in text


@given(st.text(DIGITS, min_size=3, max_size=4))
def test_cvc_text_forms_redact(cvc: str) -> None:
    """Cvc shows no digit at all."""
    for text in (repr(Cvc(cvc)), str(Cvc(cvc)), f"{Cvc(cvc)}"):
        assert _digits_in(text) == ""


@given(st.sampled_from(["SE4550000000058398257466", "DE89370400440532013000", "NO9386011117947"]))
def test_iban_text_forms_redact(iban: str) -> None:
    """Iban shows country and last four only; masked adds the check digits."""
    value = Iban(iban)
    for text in (repr(value), str(value), f"{value}"):
        assert text == f"Iban({iban[:2]}**…{iban[-4:]})"
    assert value.masked == f"{iban[:4]}****{iban[-4:]}"


def test_iban_properties() -> None:
    """Iban normalizes and exposes country, check digits, bank code and last four."""
    value = Iban("de89 3704 0044 0532 0130 00")
    assert value.value == "DE89370400440532013000"
    assert (value.country, value.check_digits, value.bank_code, value.last4) == (
        "DE",
        "89",
        "37040044",
        "3000",
    )
    assert value.masked == "DE89****3000"


def test_card_number_properties() -> None:
    """CardNumber exposes last4, first6, masked and brand."""
    card = CardNumber("378282246310005")
    assert (card.first6, card.last4, card.masked, card.brand) == (
        "378282",
        "0005",
        "378282*****0005",
        "amex",
    )
    assert repr(CardNumber("4222222222222")) == "CardNumber(…2222)"


def test_card_number_rejects_non_digits_without_echo() -> None:
    """Building a CardNumber from non-digits fails without showing the value."""
    with pytest.raises(ValueError, match="digits") as info:
        CardNumber("4242 4242 4242 4242")
    assert "4242" not in str(info.value)


@given(luhn_pans, st.text(DIGITS, min_size=3, max_size=4))
def test_card_request_repr_redacts(pan: str, cvc: str) -> None:
    """CardRequest's repr shows no expiry or CVC, and at most first six + last four."""
    request = CardRequest(
        number=CardNumber(pan),
        exp_month=7,
        exp_year=2031,
        cvc=Cvc(cvc),
        brand="visa",
        holder_name="Ada",
        customer_ref="cus_x",
        metadata={"order": "abc"},
    )
    for text in (repr(request), str(request), f"{request}"):
        expected = pan[:6] + pan[-4:] if len(pan) >= 14 else pan[-4:]
        assert _digits_in(text) == expected
        assert "Ada" not in text


@pytest.mark.parametrize(
    "value", [CardNumber("4242424242424242"), Cvc("987"), Iban("NO9386011117947")]
)
def test_hazmat_refuses_pickle_and_copies_to_itself(value: object) -> None:
    """Hazmat values cannot be pickled (bytes leave memory); copies are the same object."""
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(value)
    assert copy.copy(value) is value
    assert copy.deepcopy(value) is value


def test_card_request_refuses_pickle() -> None:
    """A whole CardRequest cannot be pickled either."""
    request = parse_card_request(card_body(), today=TODAY)
    with pytest.raises(TypeError):
        pickle.dumps(request)
