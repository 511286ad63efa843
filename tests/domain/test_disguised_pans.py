"""Card numbers in disguise are refused in every free-text field, and never echoed."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from proxy.infra.clients import add_client, parse_scopes
from tests.cards import luhn_complete
from tests.conftest import RunningProxy
from tests.core.test_invoices import invoice_body
from tests.helpers import bank_body, create
from tests.proxy.test_cards_api import card_body

PAN = "4242424242424242"
AMEX = "378282246310005"


def _digits(zero: str, number: str = PAN) -> str:
    return "".join(chr(ord(zero) + int(d)) for d in number)


def _grouped(sep: str, number: str = PAN) -> str:
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4))


DISGUISES = {
    "full-width": _digits("\uff10"),
    "arabic-indic": _digits("\u0660"),
    "devanagari": _digits("\u0966"),
    "mathematical": _digits("\U0001d7ce"),
    "zero-width-space": _grouped("\u200b"),
    "every-digit-zero-width": "\u200b".join(PAN),
    "dotted": _grouped("."),
    "slashes": _grouped("/"),
    "underscores": _grouped("_"),
    "colons": _grouped(":"),
    "commas": _grouped(","),
    "tabs": _grouped("\t"),
    "newlines": _grouped("\n"),
    "no-break-space": _grouped("\u00a0"),
    "en-dash": _grouped("\u2013"),
    "spaced-dashes": _grouped(" - "),
    "double-space": _grouped("  "),
    "amex-dotted": AMEX[:4] + "." + AMEX[4:10] + "." + AMEX[10:],
    "full-width-dotted": _grouped("\uff0e", _digits("\uff10")),
}


def _assert_not_echoed(body: object, *numbers: str) -> None:
    """No run of the number's digits, in any script, is in the response."""
    text = str(body)
    digits = "".join(str(unicodedata.digit(c)) for c in text if c.isdigit())
    for number in numbers:
        assert number not in digits
        assert number[4:12] not in digits


async def _refused(
    proxy: RunningProxy, path: str, body: dict[str, object], code: str, client: str
) -> dict[str, object]:
    status, answer, _ = await proxy.request("POST", path, client=client, json=body)
    assert status == 422, answer
    assert answer is not None
    error = answer["error"]
    assert isinstance(error, dict)
    assert error["code"] == code
    return answer


@pytest.mark.parametrize("disguise", list(DISGUISES), ids=list(DISGUISES))
async def test_disguised_pan_in_metadata_value_is_refused(
    proxy: RunningProxy, disguise: str
) -> None:
    """A metadata value holding a PAN in any script or with any short separators is refused."""
    value = "paid with " + DISGUISES[disguise] + " thanks"
    body = card_body(metadata={"note": value})
    answer = await _refused(proxy, "/v1/cards", body, "metadata_contains_card_number", "checkout")
    assert answer["error"]["param"] == "metadata.note"  # type: ignore[index]
    _assert_not_echoed(answer, PAN, AMEX)


@pytest.mark.parametrize(
    "key",
    [_grouped("."), _grouped("_"), "card." + _grouped("."), _digits("\uff10")],
    ids=["dotted", "underscores", "prefixed-dotted", "full-width"],
)
async def test_pan_in_metadata_key_is_refused(proxy: RunningProxy, key: str) -> None:
    """A metadata key holding a PAN is refused as card data, and the key is not echoed."""
    body = card_body(metadata={key: "v"})
    answer = await _refused(proxy, "/v1/cards", body, "metadata_contains_card_number", "checkout")
    assert answer["error"]["param"] == "metadata"  # type: ignore[index]
    _assert_not_echoed(answer, PAN)


async def test_pan_split_across_metadata_entries_is_refused(proxy: RunningProxy) -> None:
    """A PAN split between a key and its value, or a value and the next key, is refused."""
    for metadata in (
        {"4242": "4242 4242 4242"},
        {"a": "x 4242 4242 4242", "4242": "y"},
    ):
        body = card_body(metadata=metadata)
        answer = await _refused(
            proxy, "/v1/cards", body, "metadata_contains_card_number", "checkout"
        )
        _assert_not_echoed(answer, PAN)


async def test_timestamps_and_decimals_in_metadata_are_kept(proxy: RunningProxy) -> None:
    """Timestamps with offsets, coordinates and UUIDs are not card numbers: stored and read back."""
    metadata = {
        "created": "2026-12-02T15:39:15.123456+00:00",
        "at": "2026-12-02 15:39:15,123",
        "geo": "59.329345, 18.068581",
        "order": "0b9e5c1a-7d2f-4e8b-9c3d-5f6a7b8c9d0e",
    }
    created = await create(proxy, "/v1/cards", card_body(metadata=metadata))
    status, view, _ = await proxy.request("GET", f"/v1/tokens/{created['token']}", client="orders")
    assert status == 200
    assert view is not None
    assert view["metadata"] == metadata


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("customer_ref", _grouped("."), "invalid_customer_ref"),
        ("customer_ref", _grouped(":"), "invalid_customer_ref"),
        ("customer_ref", _grouped("_"), "invalid_customer_ref"),
        ("holder_name", "Ann " + _digits("\uff10"), "invalid_holder_name"),
        ("holder_name", "Ann " + _grouped("."), "invalid_holder_name"),
    ],
    ids=["ref-dotted", "ref-colons", "ref-underscores", "holder-full-width", "holder-dotted"],
)
async def test_disguised_pan_in_card_fields_is_refused(
    proxy: RunningProxy, field: str, value: str, code: str
) -> None:
    """customer_ref and holder_name holding a disguised PAN are refused without echo."""
    answer = await _refused(proxy, "/v1/cards", card_body(**{field: value}), code, "checkout")
    _assert_not_echoed(answer, PAN)


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("holder_name", "Ann " + _grouped("."), "invalid_holder_name"),
        ("holder_name", "Ann " + _digits("\u0660"), "invalid_holder_name"),
        ("email", _grouped(".") + "@example.com", "invalid_email"),
        ("customer_ref", _grouped("_"), "invalid_customer_ref"),
    ],
    ids=["holder-dotted", "holder-arabic-indic", "email-dotted", "ref-underscores"],
)
async def test_disguised_pan_in_bank_account_fields_is_refused(
    proxy: RunningProxy, field: str, value: str, code: str
) -> None:
    """The bank account's holder, email and customer_ref refuse a disguised PAN without echo."""
    answer = await _refused(
        proxy, "/v1/bank-accounts", bank_body(**{field: value}), code, "checkout"
    )
    _assert_not_echoed(answer, PAN)


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("invoice_number", _grouped("/"), "invalid_invoice_number"),
        ("invoice_number", _grouped("."), "invalid_invoice_number"),
        ("customer_ref", _grouped("."), "invalid_customer_ref"),
    ],
    ids=["number-slashes", "number-dotted", "ref-dotted"],
)
async def test_disguised_pan_in_invoice_fields_is_refused(
    proxy: RunningProxy, field: str, value: str, code: str
) -> None:
    """Invoice numbers and customer refs holding a disguised PAN are refused without echo."""
    answer = await _refused(proxy, "/v1/invoices", invoice_body(**{field: value}), code, "invoicer")
    _assert_not_echoed(answer, PAN)


async def test_partner_reference_with_a_pan_is_refused(proxy: RunningProxy) -> None:
    """A partner reference that is a PAN split by underscores is refused."""
    body = invoice_body(partner="stripe", partner_reference=_grouped("_"))
    answer = await _refused(proxy, "/v1/invoices", body, "invalid_partner_reference", "invoicer")
    _assert_not_echoed(answer, PAN)


@pytest.mark.parametrize(
    "ocr", [PAN, _grouped(" "), AMEX, "5555555555554444", "4222222222222"], ids=str
)
async def test_card_like_ocr_reference_is_refused(proxy: RunningProxy, ocr: str) -> None:
    """An OCR reference a card brand could have issued (IIN, length, Luhn) has its own code."""
    answer = await _refused(
        proxy,
        "/v1/invoices",
        invoice_body(ocr_reference=ocr),
        "ocr_reference_card_like",
        "invoicer",
    )
    assert answer["error"]["param"] == "ocr_reference"  # type: ignore[index]
    _assert_not_echoed(answer, ocr.replace(" ", ""))


async def test_ocr_reference_of_card_length_outside_card_ranges_is_kept(
    proxy: RunningProxy,
) -> None:
    """A 16-digit OCR reference in no card brand's IIN range is an ordinary OCR reference."""
    ocr = luhn_complete("987654321012345")
    created = await create(proxy, "/v1/invoices", invoice_body(ocr_reference=ocr), "invoicer")
    status, view, _ = await proxy.request("GET", f"/v1/tokens/{created['token']}", client="orders")
    assert status == 200
    assert view is not None
    assert view["ocr_reference"] == ocr


@pytest.mark.parametrize("name", ["4242.4242.4242.4242", "4242_4242_4242_4242", "ops-" + PAN])
def test_client_name_holding_a_pan_is_refused(tmp_path: Path, name: str) -> None:
    """A client name lands in the clients file, logs and the audit trail: no PAN in it."""
    with pytest.raises(ValueError, match="card number"):
        add_client(tmp_path / "clients.json", name, parse_scopes("read"))
    assert not (tmp_path / "clients.json").exists()
