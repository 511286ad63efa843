"""Wrapper types for card and bank data whose text forms never show the secret.

An accidental ``log.info("x", card=card)``, f-string or traceback shows
``CardNumber(424242…4242)``, ``Cvc(***)`` or ``Iban(SE**…7466)``; the raw value
is read only where it is sent to the partner (``.digits`` / ``.value``).

Instances refuse pickling: a pickle is bytes that end up in caches, queues or
files, and card data must stay in the memory of one request. Copies return the
same immutable object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn, Self

from proxy.domain.card import detect_brand, mask_pan

__all__ = ["CardNumber", "Cvc", "Iban"]


class _Hazmat:
    """Mixin: text forms come from ``__repr__`` only; no pickling."""

    __slots__ = ()

    def __str__(self) -> str:
        return repr(self)

    def __format__(self, format_spec: str) -> str:
        return format(repr(self), format_spec)

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds card data and cannot be pickled")

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds card data and cannot be pickled")

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return self


@dataclass(frozen=True, slots=True, repr=False)
class CardNumber(_Hazmat):
    """A normalized PAN (12-19 ASCII digits)."""

    digits: str

    def __post_init__(self) -> None:
        # The message must not carry the value: it is exactly what we protect.
        if not (self.digits.isascii() and self.digits.isdigit()):
            raise ValueError("CardNumber needs ASCII digits only")

    def __repr__(self) -> str:
        if len(self.digits) >= 14:
            return f"CardNumber({self.first6}…{self.last4})"
        return f"CardNumber(…{self.last4})"

    @property
    def last4(self) -> str:
        """The last four digits."""
        return self.digits[-4:]

    @property
    def first6(self) -> str:
        """The first six digits (the BIN/IIN)."""
        return self.digits[:6]

    @property
    def masked(self) -> str:
        """The PAN masked as PCI DSS 3.4.1 allows (see ``card.mask_pan``)."""
        return mask_pan(self.digits)

    @property
    def brand(self) -> str | None:
        """The brand by IIN range and length, or None."""
        return detect_brand(self.digits)


@dataclass(frozen=True, slots=True, repr=False)
class Cvc(_Hazmat):
    """A card security code; never stored, never shown."""

    value: str

    def __repr__(self) -> str:
        return "Cvc(***)"


@dataclass(frozen=True, slots=True, repr=False)
class Iban(_Hazmat):
    """An IBAN, normalized to upper case without spaces (not validated here)."""

    value: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", "".join(self.value.split()).upper())

    def __repr__(self) -> str:
        return f"Iban({self.country}**…{self.last4})"

    @property
    def country(self) -> str:
        """The ISO 3166 country code (first two characters)."""
        return self.value[:2]

    @property
    def check_digits(self) -> str:
        """The two mod-97 check digits."""
        return self.value[2:4]

    @property
    def bank_code(self) -> str:
        """Characters 5-12, the bank part for most countries (as Stripe's sepa_debit)."""
        return self.value[4:12]

    @property
    def last4(self) -> str:
        """The last four characters."""
        return self.value[-4:]

    @property
    def masked(self) -> str:
        """Country, check digits and last four, e.g. ``DE89****3000``."""
        return f"{self.country}{self.check_digits}****{self.last4}"
