"""Fields a client chooses beside card data: metadata, customer references, return URLs.

Each refuses card and bank numbers, however written: what a client stores here is
shown to read clients and logged.
"""

from __future__ import annotations

import json
import re
from typing import Final

from proxy.domain.card import pan_like
from proxy.domain.errors import InvalidRequest, ValidationFailed, echoable
from proxy.domain.iban import iban_like
from proxy.domain.schemas import (
    CUSTOMER_REF_PATTERN,
    METADATA_KEY_PATTERN,
    METADATA_MAX_KEYS,
    METADATA_MAX_VALUE,
    RETURN_URL_MAX,
)

# ---------------------------------------------------- metadata and references

_METADATA_MAX_KEYS: Final = METADATA_MAX_KEYS
_METADATA_MAX_VALUE: Final = METADATA_MAX_VALUE
_METADATA_KEY_RE: Final = re.compile(METADATA_KEY_PATTERN)
# Key characters that can sit inside a written number: digits and the separators keys allow.
_JOINING: Final = frozenset("0123456789_.-")
_CUSTOMER_REF_RE: Final = re.compile(CUSTOMER_REF_PATTERN)
_CAMEL_RE: Final = re.compile(r"([a-z0-9])([A-Z])")
_TOKEN_SPLIT_RE: Final = re.compile(r"[^a-z0-9]+")

_CARD_FIELD_TOKENS: Final = frozenset(
    {
        "pan", "cvc", "cvv", "cvn", "cvc2", "cvv2", "csc", "iban", "exp", "expiry",
        "expiration", "expmonth", "expyear", "cardnumber", "ccnumber", "ccnum",
        "pannumber", "securitycode",
    }
)  # fmt: skip
_NUMBER_OWNERS: Final = frozenset({"card", "cc", "credit", "debit", "account", "acct", "bank"})


def is_card_field_name(name: str) -> bool:
    """Whether a field name suggests card or bank data (``card_number``, ``cvc``, ``expMonth``)."""
    tokens = set(_TOKEN_SPLIT_RE.split(_CAMEL_RE.sub(r"\1_\2", name).lower())) - {""}
    if tokens & _CARD_FIELD_TOKENS:
        return True
    # Plain "number" or a card/account number; "order_number" is fine.
    return "number" in tokens and (tokens == {"number"} or bool(tokens & _NUMBER_OWNERS))


def validate_metadata(value: object) -> dict[str, str]:
    """Caller metadata as a flat dict of short strings without card data."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("metadata must be an object.", code="invalid_type", param="metadata")
    if len(value) > _METADATA_MAX_KEYS:
        raise ValidationFailed(
            f"metadata can have at most {_METADATA_MAX_KEYS} keys.",
            code="metadata_too_many_keys",
            param="metadata",
        )
    result: dict[str, str] = {}
    for key, item in value.items():
        # Keys are echoed to read clients just like values: a card number in a key is
        # refused as one, whatever else is wrong with the key.
        if isinstance(key, str) and pan_like(key):
            raise _metadata_card_number("metadata")
        if not isinstance(key, str) or _METADATA_KEY_RE.fullmatch(key) is None:
            raise ValidationFailed(
                "metadata keys must be 1-40 characters of letters, digits, '_', '.' or '-'.",
                code="metadata_invalid_key",
                param="metadata",
            )
        param = f"metadata.{echoable(key)}" if echoable(key) else "metadata"
        if is_card_field_name(key):
            raise ValidationFailed(
                "metadata keys must not name card or bank fields.",
                code="metadata_forbidden_key",
                param=param,
            )
        if not isinstance(item, str):
            raise InvalidRequest(
                "metadata values must be strings.", code="invalid_type", param=param
            )
        if len(item) > _METADATA_MAX_VALUE:
            raise ValidationFailed(
                f"metadata values can have at most {_METADATA_MAX_VALUE} characters.",
                code="metadata_value_too_long",
                param=param,
            )
        if pan_like(item):
            raise _metadata_card_number(param)
        if iban_like(item):
            raise ValidationFailed(
                "metadata must not contain bank account numbers.",
                code="metadata_contains_account_number",
                param=param,
            )
        result[key] = item
    # A number split across a key and its value, or a value and the next key, reads as
    # one in the JSON a read client gets back ("dddd":"dddd dddd dddd"). Only a key that
    # begins or ends with a digit or separator can join a number across entries.
    if any(key[0] in _JOINING or key[-1] in _JOINING for key in result) and pan_like(
        json.dumps(result, ensure_ascii=False, separators=(",", ":"))
    ):
        raise _metadata_card_number("metadata")
    return result


def _metadata_card_number(param: str) -> ValidationFailed:
    return ValidationFailed(
        "metadata must not contain card numbers.",
        code="metadata_contains_card_number",
        param=param,
    )


def validate_customer_ref(value: object) -> str | None:
    """The caller's customer reference: None or 1-64 characters of ``[A-Za-z0-9_.:@-]``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(
            "customer_ref must be a string.", code="invalid_type", param="customer_ref"
        )
    if _CUSTOMER_REF_RE.fullmatch(value) is None or pan_like(value) or iban_like(value):
        raise ValidationFailed(
            "customer_ref must be 1-64 characters of letters, digits, '_', '.', ':', '@' or '-'"
            " and must not be a card or account number.",
            code="invalid_customer_ref",
            param="customer_ref",
        )
    return value


_MAX_URL = RETURN_URL_MAX


def validate_return_url(value: object) -> str | None:
    """An absolute http(s) URL the partner may send the shopper back to, or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(
            "return_url must be a string.", code="invalid_type", param="return_url"
        )
    # The partner puts it in a redirect: no controls, no card number typed in the wrong
    # field, and only web schemes (a javascript: URL would run in the checkout's page).
    if (
        len(value) > _MAX_URL
        or not value.isprintable()
        or " " in value
        or not re.match(r"https?://[^/?#\s]+", value)
        or pan_like(value)
    ):
        raise ValidationFailed(
            f"return_url must be an absolute http(s) URL of at most {_MAX_URL} characters.",
            code="invalid_return_url",
            param="return_url",
        )
    return value
