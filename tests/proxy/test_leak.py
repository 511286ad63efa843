"""The non-leakage proof: after real traffic, no byte we wrote holds card data.

Tokenizes every partner test card, reads each back with every scope, provokes each
error the card path has (validation, auth, scope, media type, bad JSON, partner
down), then scans the SQLite files (with -wal/-shm), every log line of the session
so far, /metrics and every HTTP response body for the PANs (plain, spaced, dashed),
their middle digits in a digit context, and the CVCs as values.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.cards import PARTNER_CARDS, CardCase
from tests.conftest import RunningProxy
from tests.proxy.test_cards_api import card_body, tokenize


def pan_patterns(card: CardCase) -> list[re.Pattern[bytes]]:
    """Byte patterns that would betray ``card``: whole, formatted, or its hidden digits."""
    n = card.number
    spaced = " ".join(n[i : i + 4] for i in range(0, len(n), 4))
    dashed = spaced.replace(" ", "-")
    return [
        re.compile(re.escape(n.encode())),
        re.compile(re.escape(spaced.encode())),
        re.compile(re.escape(dashed.encode())),
        # The middle digits alone, not inside a longer digit run or a decimal fraction
        # (timestamps and durations are full of six-digit runs after a '.').
        re.compile(rb"(?<![\d.])" + card.middle.encode() + rb"(?!\d)"),
        # First six + middle, middle + last four: partial PANs.
        re.compile(re.escape(n[:12].encode())),
        re.compile(re.escape(n[6:].encode())),
    ]


def cvc_patterns(card: CardCase) -> list[re.Pattern[bytes]]:
    """The CVC as a value: quoted, or after a separator, not part of other digits."""
    c = card.cvc.encode()
    return [re.compile(rb'"' + c + rb'"'), re.compile(rb"[=:]\s*" + c + rb"(?![\d.])")]


def scan(label: str, data: bytes, cards: list[CardCase]) -> list[str]:
    """Every hit of any card's patterns in ``data``, described."""
    hits = []
    for card in cards:
        for pattern in pan_patterns(card) + cvc_patterns(card):
            for match in pattern.finditer(data):
                start = max(match.start() - 20, 0)
                hits.append(f"{label}: {pattern.pattern!r} near {data[start : match.end() + 20]!r}")
    return hits


async def test_no_card_data_in_anything_written(
    proxy: RunningProxy, log_stream: object, tmp_path: Path
) -> None:
    """Zero hits for every PAN, middle-digit run and CVC across DB files, logs, metrics, bodies."""
    seen_lines = log_stream.getvalue().count('"event":"request"')  # type: ignore[attr-defined]
    tokens = []
    for card in PARTNER_CARDS:
        created = await tokenize(
            proxy,
            card_body(card, customer_ref=f"cus-leak-{card.brand}", holder_name="Leak Test"),
        )
        tokens.append(created["token"])
    for token in tokens:
        for client in ("orders", "billing"):
            status, _, _ = await proxy.request("GET", f"/v1/tokens/{token}", client=client)
            assert status == 200

    card = PARTNER_CARDS[0]
    bad_luhn = card.number[:-1] + str((int(card.number[-1]) + 1) % 10)
    provocations: list[tuple[str, dict[str, object]]] = [
        ("checkout", {"json": card_body(card, number=bad_luhn)}),
        ("checkout", {"json": card_body(card, exp_year=2001)}),
        ("checkout", {"json": card_body(card, cvc="12")}),
        ("checkout", {"json": card_body(card, metadata={"note": card.number})}),
        ("checkout", {"json": card_body(card, customer_ref=card.number)}),
        ("checkout", {"json": card_body(card, holder_name=card.number)}),
        ("checkout", {"json": {**card_body(card), card.number: "x"}}),
        ("checkout", {"json": card_body(card, number=int(card.number))}),
        (
            "checkout",
            {
                "data": f'{{"number": "{card.number}", "cvc": "{card.cvc}"'.encode(),
                "headers": {"Content-Type": "application/json"},
            },
        ),
        (
            "checkout",
            {
                "data": f"number={card.number}&cvc={card.cvc}".encode(),
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
        ),
        ("orders", {"json": card_body(card)}),
        ("", {"json": card_body(card)}),
    ]
    for client, kwargs in provocations:
        status, _, _ = await proxy.request("POST", "/v1/cards", client=client or None, **kwargs)
        assert 400 <= status < 500
    # A card number where a token belongs.
    status, _, _ = await proxy.request("GET", f"/v1/tokens/{card.number}", client="billing")
    assert status == 404

    async with proxy.http.get(proxy.ops + "/metrics") as resp:
        metrics = await resp.read()

    # The scan is only worth something if the session's logging still reaches the buffer.
    assert log_stream.getvalue().count('"event":"request"') > seen_lines  # type: ignore[attr-defined]

    hits: list[str] = []
    db_files = sorted(proxy.vault_path.parent.glob(proxy.vault_path.name + "*"))
    assert any(p.name.endswith("-wal") for p in db_files), db_files
    for path in db_files:
        hits += scan(path.name, path.read_bytes(), PARTNER_CARDS)
    hits += scan("logs", log_stream.getvalue().encode(), PARTNER_CARDS)  # type: ignore[attr-defined]
    hits += scan("metrics", metrics, PARTNER_CARDS)
    for i, body in enumerate(proxy.responses):
        hits += scan(f"response {i}", body, PARTNER_CARDS)
    assert hits == []
    # The scan is real: it finds a PAN when one is there.
    assert scan("probe", f"x {PARTNER_CARDS[1].number} y".encode(), PARTNER_CARDS)
    assert scan("probe", f'"cvc": "{card.cvc}"'.encode(), PARTNER_CARDS)

    # Partner references and customer refs are inside the ciphertext, not in the files.
    for token in tokens:
        _, view, _ = await proxy.request("GET", f"/v1/tokens/{token}", client="billing")
        assert view is not None
        reference = str(view["partner_reference"]).encode()
        for path in db_files:
            data = path.read_bytes()
            assert reference not in data
            assert b"cus-leak-" not in data
            assert b"pm_" not in data
