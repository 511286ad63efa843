"""Test card numbers: real brand test PANs, plus PANs with distinctive middle digits.

The leak scan looks for each PAN, its middle digits and its CVC, so the middle digits
of the cards sent to the partner are chosen not to repeat the first six.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass


def luhn_complete(partial: str) -> str:
    """Append the Luhn check digit to ``partial``."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return partial + str((10 - total % 10) % 10)


def card_like_run() -> str:
    """A fresh Luhn-valid run of 16 digits, as an id from outside can hold one by chance.

    Digits 1-9 only, so no four-digit group of it loses a leading zero when an IPv6
    address made of it is normalised.
    """
    while True:
        run = luhn_complete("".join(secrets.choice("123456789") for _ in range(15)))
        if not run.endswith("0"):
            return run


def reference_luhn(number: str) -> bool:
    """Textbook Luhn, written independently of proxy.domain.card (the tests' oracle)."""
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


@dataclass(frozen=True)
class CardCase:
    """A card the tests send, with the brand our IIN detection must give it."""

    number: str
    brand: str
    cvc: str

    @property
    def middle(self) -> str:
        """The digits between the first six and the last four."""
        return self.number[6:-4]


# 16 digits each: localstripe accepts only 16-digit numbers.
PARTNER_CARDS = [
    CardCase(luhn_complete("424242" + "918273" + "645"), "visa", "731"),
    CardCase(luhn_complete("555555" + "836401" + "972"), "mastercard", "846"),
    CardCase(luhn_complete("222300" + "694518" + "203"), "mastercard", "952"),
    CardCase(luhn_complete("601111" + "570394" + "826"), "discover", "617"),
    CardCase(luhn_complete("356600" + "481759" + "360"), "jcb", "394"),
    CardCase(luhn_complete("620000" + "739164" + "582"), "unionpay", "285"),
]
VISA = PARTNER_CARDS[0]
