"""Bank account requests, no I/O: SEPA debit bodies, the mandate acceptance, the bank code kept.

The IBAN travels only inside :class:`proxy.domain.hazmat.Iban`; the vault keeps country,
bank code, last four and the masked form, never the IBAN.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Final

from msgspec import UNSET

from proxy.domain.card import pan_like
from proxy.domain.decode import decode
from proxy.domain.errors import InvalidRequest, ValidationFailed
from proxy.domain.fields import validate_customer_ref
from proxy.domain.hazmat import Iban
from proxy.domain.iban import iban_like, parse_iban
from proxy.domain.schemas import (
    EMAIL_MAX,
    HOLDER_NAME_MAX,
    USER_AGENT_MAX,
    BankAccountRequestBody,
    MandateAcceptanceBody,
)

_MAX_USER_AGENT: Final = USER_AGENT_MAX
# A mandate accepted longer ago than this is not "the moment they accepted" any more.
_MAX_ACCEPTANCE_AGE: Final = 24 * 3600
_CLOCK_SKEW: Final = 300
# Deliberately loose (RFC 5322 is not worth matching): one @, a dot in the domain,
# no spaces or controls; the partner checks deliverability.
_EMAIL_RE: Final = re.compile(r"[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+")


# Where the national bank identifier sits in the IBAN (offset, length), from the SWIFT
# IBAN registry's "bank identifier" positions. Countries not listed store no bank code.
_BANK_CODE_AT: Final[dict[str, tuple[int, int]]] = {
    "AT": (4, 5), "BE": (4, 3), "BG": (4, 4), "CH": (4, 5), "CY": (4, 3), "CZ": (4, 4),
    "DE": (4, 8), "DK": (4, 4), "EE": (4, 2), "ES": (4, 4), "FI": (4, 3), "FR": (4, 5),
    "GB": (4, 4), "GR": (4, 3), "HR": (4, 7), "HU": (4, 3), "IE": (4, 4), "IS": (4, 4),
    "IT": (5, 5), "LI": (4, 5), "LT": (4, 5), "LU": (4, 3), "LV": (4, 4), "MC": (4, 5),
    "MT": (4, 4), "NL": (4, 4), "NO": (4, 4), "PL": (4, 3), "PT": (4, 4), "RO": (4, 4),
    "SE": (4, 3), "SI": (4, 5), "SK": (4, 4), "SM": (5, 5),
}  # fmt: skip
# Characters of the account that country, check digits, bank code and last four must
# leave unknown. Below this the stored fields (with the mod-97 check) would rebuild
# the IBAN, as they would for Belgian or Norwegian IBANs: the bank code is then dropped.
MIN_HIDDEN_CHARS: Final = 6


def national_bank_code(iban: Iban) -> str | None:
    """The bank identifier of ``iban``, or None when unknown or when it would reveal too much."""
    position = _BANK_CODE_AT.get(iban.country)
    if position is None:
        return None
    offset, length = position
    if len(iban.value) - offset - length - 4 < MIN_HIDDEN_CHARS:
        return None
    return iban.value[offset : offset + length]


@dataclass(frozen=True, slots=True)
class MandateAcceptance:
    """How the shopper accepted a SEPA mandate online: personal data, kept only in the trail."""

    ip_address: str
    user_agent: str
    accepted_at: int  # Unix seconds

    def __repr__(self) -> str:
        # Device information is personal data: not for logs or tracebacks.
        return (
            f"MandateAcceptance(ip_address='***', user_agent='***', accepted_at={self.accepted_at})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class BankAccountRequest:
    """A validated ``POST /v1/bank-accounts`` body; lives only for one request."""

    iban: Iban
    holder_name: str
    email: str | None
    customer_ref: str | None
    # How the shopper accepted the SEPA mandate; required with customer_ref.
    mandate: MandateAcceptance | None = None

    def __repr__(self) -> str:
        # The holder's name and email are personal data: not for logs either.
        return (
            f"BankAccountRequest(iban={self.iban!r}, holder_name='***', "
            f"email={'***' if self.email else None!r}, customer_ref={self.customer_ref!r}, "
            f"mandate={self.mandate!r})"
        )

    __str__ = __repr__


def _text(value: str | None, name: str, *, code: str, max_len: int) -> str | None:
    if value is None:
        return None
    value = value.strip()
    # Control characters would forge log lines downstream; a card number or IBAN
    # typed into the wrong field must not be forwarded or stored.
    if (
        not value
        or len(value) > max_len
        or not value.isprintable()
        or pan_like(value)
        or iban_like(value)
    ):
        raise ValidationFailed(
            f"{name} must be 1-{max_len} printable characters and hold no account number.",
            code=code,
            param=name,
        )
    return value


def parse_bank_account_request(body: object) -> BankAccountRequest:
    """Validate a bank account body: structure, IBAN, holder name, email, customer_ref."""
    account = decode(body, BankAccountRequestBody)
    iban = parse_iban(account.iban)
    holder = _text(
        account.holder_name, "holder_name", code="invalid_holder_name", max_len=HOLDER_NAME_MAX
    )
    email = _text(account.email, "email", code="invalid_email", max_len=EMAIL_MAX)
    if email is not None and _EMAIL_RE.fullmatch(email) is None:
        raise ValidationFailed(
            "email is not an email address.", code="invalid_email", param="email"
        )
    assert holder is not None  # noqa: S101 - required by the schema
    customer_ref = validate_customer_ref(account.customer_ref)
    raw_acceptance = account.mandate_acceptance
    if customer_ref is not None and raw_acceptance is None:
        # A SEPA debit off-session needs a mandate, and a mandate needs the shopper's
        # acceptance: saving the account without one would hand billing an unchargeable token.
        raise InvalidRequest(
            "mandate_acceptance is required with customer_ref.",
            code="missing_field",
            param="mandate_acceptance",
        )
    if customer_ref is None and raw_acceptance is not None:
        raise InvalidRequest(
            "mandate_acceptance needs a customer_ref to save the mandate on.",
            code="invalid_request",
            param="mandate_acceptance",
        )
    return BankAccountRequest(
        iban=iban,
        holder_name=holder,
        email=email,
        customer_ref=customer_ref,
        mandate=None if raw_acceptance is None else parse_mandate_acceptance(raw_acceptance),
    )


def parse_mandate_acceptance(value: object, *, now: float | None = None) -> MandateAcceptance:
    """Validate ``mandate_acceptance``: the shopper's IP address and user agent at acceptance.

    ``accepted_at`` (Unix seconds) defaults to now; it may not lie in the future or more
    than a day back.
    """
    param = "mandate_acceptance"
    acceptance = decode(value, MandateAcceptanceBody, param=param)
    raw_ip: object = acceptance.ip_address
    try:
        ip = str(ipaddress.ip_address(raw_ip)) if isinstance(raw_ip, str) else None
    except ValueError:
        ip = None
    if ip is None:
        raise ValidationFailed(
            "ip_address must be the shopper's IPv4 or IPv6 address.",
            code="invalid_ip_address",
            param=f"{param}.ip_address",
        )
    agent: object = acceptance.user_agent
    if (
        not isinstance(agent, str)
        or not 1 <= len(agent) <= _MAX_USER_AGENT
        or not agent.isprintable()
        or pan_like(agent)
        or iban_like(agent)
    ):
        raise ValidationFailed(
            f"user_agent must be the shopper's browser user agent, 1-{_MAX_USER_AGENT} "
            "printable characters.",
            code="invalid_user_agent",
            param=f"{param}.user_agent",
        )
    current = time.time() if now is None else now
    accepted_at: object = acceptance.accepted_at
    if accepted_at is UNSET:
        accepted_at = int(current)
    if (
        not isinstance(accepted_at, int)
        or isinstance(accepted_at, bool)
        or not current - _MAX_ACCEPTANCE_AGE <= accepted_at <= current + _CLOCK_SKEW
    ):
        raise ValidationFailed(
            "accepted_at must be the Unix time of acceptance, within the last day.",
            code="invalid_accepted_at",
            param=f"{param}.accepted_at",
        )
    return MandateAcceptance(ip_address=ip, user_agent=agent, accepted_at=accepted_at)
