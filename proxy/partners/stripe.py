"""Stripe through its official SDK: card PaymentMethods via ``raw_request_async``.

``raw_request_async`` rather than ``payment_methods.create_async``: the typed call
builds a tree of StripeObjects per response that we would throw away, and costs a
fifth of the proxy's throughput. The SDK still does auth, encoding, versioning and
error classification. One client and one aiohttp session per app; the client only
ever talks to its configured base address (the outbound allowlist).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import stripe

from proxy.errors import (
    PartnerDeclined,
    PartnerError,
    PartnerTimeout,
    PartnerUnavailable,
)
from proxy.partners.base import PartnerCard

if TYPE_CHECKING:
    from proxy.validation import CardRequest

# Stripe codes we pass through: each is a fixed word from Stripe's docs, never input.
_CARD_CODES = frozenset(
    {
        "card_declined",
        "expired_card",
        "incorrect_cvc",
        "incorrect_number",
        "invalid_cvc",
        "invalid_expiry_month",
        "invalid_expiry_year",
        "invalid_number",
        "processing_error",
        "card_not_supported",
    }
)
_DECLINE_CODES = frozenset(
    {
        "generic_decline",
        "insufficient_funds",
        "lost_card",
        "stolen_card",
        "do_not_honor",
        "fraudulent",
        "card_not_supported",
        "expired_card",
        "incorrect_cvc",
        "processing_error",
        "card_velocity_exceeded",
    }
)


class _DropBelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def silence_sdk_logging() -> None:
    """Stop the SDK from logging request bodies (card number and CVC) anywhere.

    stripe-python logs every request's form body at DEBUG and prints it to stderr when
    ``stripe.log`` or the STRIPE_LOG environment variable says debug/info. A filter on
    its logger (sturdier than a level someone may lower) and clearing both switches
    close that path whatever the process's own log level.
    """
    logger = logging.getLogger("stripe")
    if not any(isinstance(f, _DropBelowWarning) for f in logger.filters):
        logger.addFilter(_DropBelowWarning())
    # Also the level: the SDK logs two info and two debug lines per call, and below its
    # level a logger returns before building a LogRecord (measured: ~5% of a tokenize).
    logger.setLevel(logging.WARNING)
    stripe.log = None
    stripe._util.STRIPE_LOG = None  # read from the environment at import time


def translate_error(exc: stripe.StripeError) -> PartnerError:
    """Map a Stripe SDK error to ours, keeping Stripe's request id and codes only."""
    request_id = exc.request_id
    code = exc.code if exc.code in _CARD_CODES else None
    decline_code = getattr(exc, "error", None) and getattr(exc.error, "decline_code", None)
    decline_code = decline_code if decline_code in _DECLINE_CODES else None
    if isinstance(exc, stripe.CardError) or (
        isinstance(exc, stripe.InvalidRequestError) and code is not None
    ):
        return PartnerDeclined(
            "The payment partner declined the card.",
            code=code or "card_declined",
            partner_request_id=request_id,
            decline_code=decline_code,
        )
    if isinstance(exc, stripe.RateLimitError):
        return PartnerUnavailable(
            "The payment partner is rate limiting requests; retry later.",
            code="partner_rate_limited",
            partner_request_id=request_id,
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, stripe.APIConnectionError):
        if isinstance(exc.__cause__, asyncio.TimeoutError | TimeoutError):
            return PartnerTimeout(
                "The payment partner did not answer in time.", partner_request_id=request_id
            )
        return PartnerUnavailable(
            "The payment partner cannot be reached.", partner_request_id=request_id
        )
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return PartnerError(
            "The proxy's credentials were refused by the payment partner.",
            code="partner_auth_failed",
            partner_request_id=request_id,
        )
    if isinstance(exc, stripe.InvalidRequestError):
        return PartnerError(
            "The payment partner rejected the request.",
            code="partner_rejected_request",
            partner_request_id=request_id,
        )
    return PartnerError("The payment partner failed.", partner_request_id=request_id)


class StripePartner:
    """Payment partner adapter for Stripe (or localstripe in the sandbox)."""

    name = "stripe"

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str = "https://api.stripe.com",
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        silence_sdk_logging()
        # Telemetry sends Stripe the previous call's timings in a header, bookkept per
        # call under a lock; we measure partner latency ourselves (metrics).
        stripe.enable_telemetry = False
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
        )
        http_client = stripe.AIOHTTPClient(
            session=self._session,
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout),
        )
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            http_client=http_client,
            # Retries belong to the proxy's own policy (idempotency keys, backoff), not the SDK's.
            max_network_retries=0,
        )

    async def _post(self, path: str, params: dict[str, Any], idempotency_key: str | None) -> Any:
        if idempotency_key is not None:
            params["idempotency_key"] = idempotency_key
        try:
            response = await self._client.raw_request_async("post", path, **params)
        except stripe.StripeError as exc:
            raise translate_error(exc) from None
        return response.data

    async def create_card(
        self, card: CardRequest, *, idempotency_key: str | None = None
    ) -> PartnerCard:
        """Create a card PaymentMethod; the card data leaves the process only here."""
        params: dict[str, Any] = {
            "type": "card",
            "card": {
                "number": card.number.digits,
                "exp_month": card.exp_month,
                "exp_year": card.exp_year,
                "cvc": card.cvc.value,
            },
        }
        if card.holder_name:
            params["billing_details"] = {"name": card.holder_name}
        data = await self._post("/v1/payment_methods", params, idempotency_key)
        try:
            details = data["card"]
            return PartnerCard(
                reference=str(data["id"]),
                fingerprint=details.get("fingerprint"),
                last4=str(details["last4"]),
                partner_brand=details.get("brand"),
            )
        except (KeyError, TypeError):
            raise PartnerError(
                "The payment partner answered in an unexpected shape.",
                code="partner_bad_response",
            ) from None

    async def close(self) -> None:
        """Close the HTTP session when this adapter owns it."""
        if self._own_session:
            await self._session.close()
