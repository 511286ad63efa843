"""Invoice references: OCR, currency, amount and date rules; stored sealed as vtok_inv_."""

from __future__ import annotations

import pytest

from proxy.domain.errors import ValidationFailed
from proxy.domain.invoice import ISO_4217, validate_currency
from tests.cards import luhn_complete
from tests.conftest import RunningProxy
from tests.helpers import counted, create, db_bytes, metrics_text, resolve, rows

OCR_PLAIN = luhn_complete("9876543210123")
OCR_WITH_LENGTH = luhn_complete("12345" + "7")  # 7 digits in all: the length digit is 7


def invoice_body(**overrides: object) -> dict[str, object]:
    """A valid POST /v1/invoices body."""
    body: dict[str, object] = {
        "customer_ref": "cus-inv-1",
        "invoice_number": "F-2025-0042",
        "ocr_reference": OCR_PLAIN,
        "amount": 129900,
        "currency": "SEK",
        "due_date": "2025-12-31",
    }
    body.update(overrides)
    return body


async def test_invoice_is_stored_sealed_and_read_back(proxy: RunningProxy) -> None:
    """A valid invoice gets a vtok_inv_ token; its fields read back and are not in the file."""
    created = await create(proxy, "/v1/invoices", invoice_body(), client="invoicer")
    assert created["token"].startswith("vtok_inv_")
    assert created["kind"] == "invoice"
    assert created["amount"] == 129900
    assert created["currency"] == "SEK"
    assert created["ocr_reference"] == OCR_PLAIN
    status, view, _ = await proxy.request("GET", f"/v1/tokens/{created['token']}", client="orders")
    assert status == 200
    assert view is not None
    assert view["invoice_number"] == "F-2025-0042"
    assert view["due_date"] == "2025-12-31"
    assert "partner_reference" not in view
    data = db_bytes(proxy.vault_path)
    assert OCR_PLAIN.encode() not in data
    assert b"F-2025-0042" not in data
    assert rows(proxy.vault_path, "SELECT kind FROM records") == [("invoice",)]
    assert 'tokenproxy_tokens_created_total{kind="invoice"} 1.0' in await metrics_text(proxy)


async def test_invoice_partner_reference_is_stored_not_called(proxy: RunningProxy) -> None:
    """partner + partner_reference are kept for resolve clients; no partner call is made."""
    created = await create(
        proxy,
        "/v1/invoices",
        invoice_body(partner="stripe", partner_reference="in_1AbC", ocr_reference=None),
        client="invoicer",
    )
    resolved = await resolve(proxy, created["token"])
    assert resolved["partner"] == "stripe"
    assert resolved["partner_reference"] == "in_1AbC"
    assert resolved["ocr_reference"] is None
    assert not counted(await metrics_text(proxy), "tokenproxy_partner_requests_total")


@pytest.mark.parametrize(
    "overrides",
    [
        {"ocr_reference": OCR_WITH_LENGTH, "ocr_length_digit": True},
        {"ocr_reference": "  " + OCR_PLAIN[:4] + " " + OCR_PLAIN[4:]},
        {"currency": "eur", "amount": 0},
        {"currency": "JPY", "amount": 10**15},
        {"due_date": "2024-02-29"},
    ],
    ids=["length-digit", "spaces", "lowercase-currency-zero", "max-amount", "leap-day"],
)
async def test_valid_invoice_variants(proxy: RunningProxy, overrides: dict[str, object]) -> None:
    """OCR with a length digit or spaces, lowercase currency, zero and large amounts pass."""
    created = await create(proxy, "/v1/invoices", invoice_body(**overrides), client="invoicer")
    assert created["currency"] == str(invoice_body(**overrides)["currency"]).upper()


@pytest.mark.parametrize(
    ("overrides", "status", "code", "param"),
    [
        ({"ocr_reference": OCR_PLAIN[:-1] + str((int(OCR_PLAIN[-1]) + 1) % 10)}, 422,
         "invalid_ocr_reference", "ocr_reference"),
        ({"ocr_reference": "1"}, 422, "invalid_ocr_reference", "ocr_reference"),
        ({"ocr_reference": "12a4"}, 422, "invalid_ocr_reference", "ocr_reference"),
        ({"ocr_reference": luhn_complete("1" * 25)}, 422, "invalid_ocr_reference",
         "ocr_reference"),
        ({"ocr_reference": 1234567897}, 400, "invalid_type", "ocr_reference"),
        ({"ocr_reference": OCR_PLAIN, "ocr_length_digit": True}, 422,
         "invalid_ocr_length_digit", "ocr_reference"),
        ({"ocr_reference": None, "ocr_length_digit": True}, 400, "missing_field",
         "ocr_reference"),
        ({"ocr_length_digit": "yes"}, 400, "invalid_type", "ocr_length_digit"),
        ({"currency": "XYZ"}, 422, "invalid_currency", "currency"),
        ({"currency": "XAU"}, 422, "invalid_currency", "currency"),
        ({"currency": "HRK"}, 422, "invalid_currency", "currency"),
        ({"currency": "SEKX"}, 422, "invalid_currency", "currency"),
        ({"currency": 752}, 400, "invalid_type", "currency"),
        ({"amount": -1}, 422, "invalid_amount", "amount"),
        ({"amount": 10**15 + 1}, 422, "invalid_amount", "amount"),
        ({"amount": 12.5}, 400, "invalid_type", "amount"),
        ({"amount": "100"}, 400, "invalid_type", "amount"),
        ({"amount": True}, 400, "invalid_type", "amount"),
        ({"due_date": "2025-02-30"}, 422, "invalid_date", "due_date"),
        ({"due_date": "20251231"}, 422, "invalid_date", "due_date"),
        ({"due_date": "2025-12-31T00:00:00"}, 422, "invalid_date", "due_date"),
        ({"invoice_number": ""}, 422, "invalid_invoice_number", "invoice_number"),
        ({"invoice_number": "4242424242424242"}, 422, "invalid_invoice_number",
         "invoice_number"),
        ({"customer_ref": None}, 400, "missing_field", "customer_ref"),
        ({"partner": "stripe"}, 400, "missing_field", "partner_reference"),
        ({"partner": "adyen", "partner_reference": "x1"}, 422, "unsupported_partner",
         "partner"),
        ({"partner": "stripe", "partner_reference": "in/../x"}, 422,
         "invalid_partner_reference", "partner_reference"),
        ({"iban": "x"}, 400, "unknown_field", "iban"),
    ],
)  # fmt: skip
async def test_invalid_invoices(
    proxy: RunningProxy, overrides: dict[str, object], status: int, code: str, param: str
) -> None:
    """Each broken rule gets its own code and param, and nothing is stored."""
    got, body, _ = await proxy.request(
        "POST", "/v1/invoices", client="invoicer", json=invoice_body(**overrides)
    )
    assert got == status, body
    assert body is not None
    assert body["error"]["code"] == code  # type: ignore[index]
    assert body["error"]["param"] == param  # type: ignore[index]
    assert rows(proxy.vault_path, "SELECT COUNT(*) FROM records") == [(0,)]


async def test_invoices_need_the_invoice_scope(proxy: RunningProxy) -> None:
    """Only the invoice scope stores invoices; tokenize does not imply it."""
    for client in ("checkout", "orders", "billing", "ops"):
        status, _, _ = await proxy.request(
            "POST", "/v1/invoices", client=client, json=invoice_body()
        )
        assert status == 403


def test_currency_list_is_current_iso_4217() -> None:
    """Common currencies are in; withdrawn, metal and test codes are out."""
    assert {"SEK", "EUR", "USD", "NOK", "DKK", "GBP", "JPY", "CHF", "ZWG"} <= ISO_4217
    assert not {"HRK", "SLL", "ZWL", "XAU", "XTS", "XXX", "DEM"} & ISO_4217
    assert all(len(code) == 3 and code.isupper() for code in ISO_4217)


def test_currency_list_follows_the_maintained_list() -> None:
    """Funds and the franc zones are in; units of account and the withdrawn lev are out."""
    assert {"CHE", "CLF", "USN", "XAF", "XOF", "XPF", "XCD", "XCG"} <= ISO_4217
    # Bulgaria's lev ended with its euro changeover; ANG with the Caribbean guilder's.
    assert not {"BGN", "ANG", "XAD", "XDR", "XSU", "XUA", "XBA"} & ISO_4217


@pytest.mark.parametrize("raw", ["BGN", "Sek1", "xts", "ß", "€€€"])
def test_refused_currency_is_not_echoed(raw: str) -> None:
    """A refused currency is invalid_currency, and the error holds none of the input."""
    with pytest.raises(ValidationFailed) as info:
        validate_currency(raw)
    assert info.value.code == "invalid_currency"
    assert raw not in info.value.message
    assert raw.upper() not in str(info.value)
