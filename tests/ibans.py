"""Test IBANs: published examples per country, plus IBANs built with distinctive digits.

The leak scan looks for each IBAN whole, in printed blocks, and for the account part
that the stored fields (country, check digits, bank code, last four) must leave hidden.
"""

from __future__ import annotations

from dataclasses import dataclass


def with_check_digits(country: str, bban: str) -> str:
    """The IBAN for ``country`` and ``bban`` with correct ISO 7064 mod 97-10 check digits."""
    number = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{country}{98 - number % 97:02d}{bban}"


@dataclass(frozen=True)
class IbanCase:
    """An IBAN the tests send, and the bank code we may store for it (None: none)."""

    iban: str
    bank_code: str | None

    @property
    def country(self) -> str:
        """The country code."""
        return self.iban[:2]

    @property
    def printed(self) -> str:
        """The IBAN in the printed form: blocks of four."""
        return " ".join(self.iban[i : i + 4] for i in range(0, len(self.iban), 4))

    @property
    def hidden(self) -> str:
        """Characters no stored field may reveal: after the bank code, before the last four."""
        start = 4 + len(self.bank_code or "") + (1 if self.country in {"IT", "SM"} else 0)
        return self.iban[start:-4]

    @property
    def masked(self) -> str:
        """The masked form the vault keeps."""
        return f"{self.iban[:4]}****{self.iban[-4:]}"


# Published examples (ECBS / national bank documentation), several SEPA countries.
VALID = [
    IbanCase("DE89370400440532013000", "37040044"),
    IbanCase("GB82WEST12345698765432", "WEST"),
    IbanCase("FR1420041010050500013M02606", "20041"),
    IbanCase("SE4550000000058398257466", "500"),
    IbanCase("NL91ABNA0417164300", "ABNA"),
    IbanCase("AT611904300234573201", "19043"),
    IbanCase("ES9121000418450200051332", "2100"),
    IbanCase("IT60X0542811101000000123456", "05428"),
    # Too short to store a bank code without nearly rebuilding the account.
    IbanCase("BE68539007547034", None),
    IbanCase("NO9386011117947", None),
]
# Built for the leak scan: account digits that appear nowhere else in the suite.
LEAK = [
    IbanCase(with_check_digits("DE", "59350012" + "7318469205"), "59350012"),
    IbanCase(with_check_digits("SE", "800" + "08462957318406925"), "800"),
    IbanCase(with_check_digits("FR", "30004" + "02837" + "46195208361" + "15"), "30004"),
]
