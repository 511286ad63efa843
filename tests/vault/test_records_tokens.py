"""Minted tokens: well-formed, and never spelling a card-number-like run of digits."""

from __future__ import annotations

import base64

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pandetect import holds_pan
from tests.cards import card_like_run
from vault import Kind, new_token
from vault.records import token_from_seed, token_kind


def _card_like_seed() -> bytes:
    """24 bytes whose base64url spelling starts with a Luhn-valid run of 16 digits."""
    return base64.urlsafe_b64decode(card_like_run() + "A" * 16)


def test_a_seed_that_spells_a_card_like_run_gets_another_token_each_time_the_same() -> None:
    seed = _card_like_seed()
    plain = "vtok_card_" + base64.urlsafe_b64encode(seed).decode()
    assert holds_pan(plain)
    token = token_from_seed(Kind.CARD, seed)
    assert token != plain
    assert not holds_pan(token)
    assert token_kind(token) is Kind.CARD
    assert token_from_seed(Kind.CARD, seed) == token


@given(st.binary(min_size=24, max_size=24))
def test_every_other_seed_keeps_its_token(seed: bytes) -> None:
    plain = "vtok_bank_" + base64.urlsafe_b64encode(seed).decode()
    assume(not holds_pan(plain))
    assert token_from_seed(Kind.BANK, seed) == plain


def test_a_random_draw_that_spells_a_card_like_run_is_drawn_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draws = iter([card_like_run() + "A" * 16, "B" * 32])
    monkeypatch.setattr("vault.records.secrets.token_urlsafe", lambda _n: next(draws))
    assert new_token(Kind.INVOICE) == "vtok_inv_" + "B" * 32
