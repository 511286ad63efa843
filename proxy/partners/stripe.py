"""Stripe through its official SDK: card PaymentMethods via the SDK's lower layer.

Not ``payment_methods.create_async``: the typed call builds a tree of StripeObjects per
response that we would throw away, and costs a fifth of the proxy's throughput. POSTs
(every payment method, customer and setup the proxy creates) skip ``raw_request_async``
too: per call it rebuilds the SDK's headers (its user agent JSON, agent detection from
the environment, a fresh idempotency key even when one is given) and formats log lines
nobody reads, about a sixth of a tokenize. They send the SDK's own headers, built once,
with the SDK's form encoding on the shared session, and hand the answer to the SDK's
response interpretation, so Stripe's error classes, codes and request ids are the
SDK's as before. Reads and deletes stay on ``raw_request_async``. One client and one
aiohttp session per app; the client only ever talks to its configured base address
(the outbound allowlist).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import stripe
import structlog
from stripe._encode import _api_encode

from proxy.domain.bank import BankAccountRequest, MandateAcceptance
from proxy.domain.card import pan_like
from proxy.domain.errors import (
    PartnerDeclined,
    PartnerError,
    PartnerTimeout,
    PartnerUnavailable,
)
from proxy.domain.requests import CardRequest
from proxy.partners.ports import (
    PartnerBankAccount,
    PartnerCard,
    PartnerPaymentMethod,
    PartnerSetup,
)

_log = structlog.get_logger("tokenproxy.partner")

# The API version every request names (the Stripe-Version header). Without it Stripe
# uses the version the installed SDK was released with, so rebuilding the image with
# another 16.x would change request and response shapes unannounced
# (https://docs.stripe.com/sdks/set-version). This is stripe 16.0's own version, the
# floor's, so every SDK the declared range allows sends it as is; moving it is a
# deliberate upgrade (https://docs.stripe.com/upgrades).
STRIPE_API_VERSION = "2026-09-30.endive"

# Partner object ids go into URL paths: only Stripe's id alphabet may, and no more than
# Stripe promises. Prefix and length are not part of its API contract: "object IDs we
# generate will never exceed 255 characters", and changing their length or format,
# prefixes included, is a backwards-compatible change (https://docs.stripe.com/upgrades).
# A stricter check would fail a call after its object exists at Stripe.
_OBJECT_ID_RE = re.compile(r"[A-Za-z0-9_]{1,255}")
_MANDATE_ID_RE = _OBJECT_ID_RE
_WORD_RE = re.compile(r"[a-z][a-z_]{0,39}")
# A parameter's name as Stripe reports it (``card[number]``, ``items[0][price]``).
_PARAM_RE = re.compile(r"[a-z][a-z0-9_\[\]]{0,99}")
_REQUEST_ID_RE = _OBJECT_ID_RE
_RATE_LIMIT_CODES = frozenset({"rate_limit", "lock_timeout"})
_IDEMPOTENCY_CODES = frozenset({"idempotency_key_in_use"})
# Answers that mean "already done" for detach/delete, so erasure can be repeated.
_GONE_CODES = frozenset({"resource_missing", "payment_method_unexpected_state"})

# Stripe codes we pass through: each is a fixed word from Stripe's docs, never input.
_CARD_CODES = frozenset(
    {
        "card_declined",
        "expired_card",
        "incorrect_cvc",
        "incorrect_number",
        # The issuer's postal code check failed: the shopper can correct it.
        "incorrect_zip",
        "invalid_cvc",
        "invalid_expiry_month",
        "invalid_expiry_year",
        "invalid_number",
        "processing_error",
        "card_not_supported",
        "authentication_required",
        "setup_intent_authentication_failure",
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


def _retry_after(exc: stripe.StripeError) -> float | None:
    """Stripe's Retry-After header in seconds (delta form only; capped at an hour)."""
    headers = exc.headers or {}
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), 3600.0)


def _body_error(exc: stripe.StripeError) -> dict[str, Any]:
    """The ``error`` object of Stripe's answer (https://docs.stripe.com/api/errors), or {}."""
    body = exc.json_body
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _word(value: Any) -> str | None:
    """A Stripe type or code as a fixed word (they are enums in Stripe's docs), else None."""
    return value if isinstance(value, str) and _WORD_RE.fullmatch(value) else None


def _param(value: Any) -> str | None:
    """Stripe's ``param`` (a parameter's name, such as ``card[number]``), never a value."""
    return value if isinstance(value, str) and _PARAM_RE.fullmatch(value) else None


def retry_rule(exc: stripe.StripeError) -> tuple[bool, float | None]:
    """Whether Stripe's rules allow a retry (same idempotency key), and its Retry-After.

    Network errors, 409 (a concurrent request on the same key), 429 and 5xx may be
    retried; every other 4xx would fail again the same way. An explicit
    ``Stripe-Should-Retry`` header overrides the status, as the Stripe SDKs do.
    """
    if isinstance(exc, stripe.APIConnectionError):
        return True, None
    headers = exc.headers or {}
    should = headers.get("stripe-should-retry") or headers.get("Stripe-Should-Retry")
    if should in {"true", "false"}:
        return should == "true", _retry_after(exc)
    status = exc.http_status or 0
    # Stripe's own SDKs retry every 409 (most are idempotency_key_in_use: the key's
    # first request still runs at Stripe, and a later retry gets its answer).
    if status in {409, 429} or status >= 500:
        return True, _retry_after(exc)
    return False, None


def translate_error(exc: stripe.StripeError) -> PartnerError:
    """Map a Stripe SDK error to ours, keeping Stripe's request id and codes only.

    Logged with what tells one refusal from another (Stripe's request id, error type,
    code, decline code and param), never Stripe's message, which may quote input.
    """
    error = _translate(exc)
    error.retryable, error.retry_after = retry_rule(exc)
    body = _body_error(exc)
    error.partner_status = exc.http_status
    error.partner_param = _param(body.get("param"))
    _log.warning(
        "partner_error",
        partner_request_id=_request_id(exc),
        http_status=exc.http_status,
        error_type=_word(body.get("type")),
        partner_code=_word(body.get("code")),
        decline_code=_word(body.get("decline_code")),
        partner_param=_param(body.get("param")),
        error_code=error.code,
        retryable=error.retryable,
    )
    return error


def _request_id(exc: stripe.StripeError) -> str | None:
    """Stripe's request id (``req_…``), the handle its support and dashboard search by."""
    value = exc.request_id
    return value if isinstance(value, str) and _REQUEST_ID_RE.fullmatch(value) else None


def _translate(exc: stripe.StripeError) -> PartnerError:
    """Classify by what Stripe's body says (``type``, ``code``, ``decline_code``), not by
    the SDK's exception class, which follows the HTTP status alone: Stripe answers 402
    for requests that failed for other reasons than a card, and 409/400 for idempotency
    errors (https://docs.stripe.com/api/errors, https://docs.stripe.com/error-codes).
    """
    request_id = _request_id(exc)
    body = _body_error(exc)
    kind = _word(body.get("type"))
    raw_code = _word(body.get("code"))
    code = raw_code if raw_code in _CARD_CODES else None
    decline_code = _word(body.get("decline_code"))
    decline_code = decline_code if decline_code in _DECLINE_CODES else None
    status = exc.http_status or 0
    if isinstance(exc, stripe.APIConnectionError):
        if isinstance(exc.__cause__, asyncio.TimeoutError | TimeoutError):
            return PartnerTimeout(
                "The payment partner did not answer in time.", partner_request_id=request_id
            )
        return PartnerUnavailable(
            "The payment partner cannot be reached.", partner_request_id=request_id
        )
    if kind == "card_error" or (kind == "invalid_request_error" and code is not None):
        return PartnerDeclined(
            "The payment partner declined the card.",
            code=code or "card_declined",
            partner_request_id=request_id,
            decline_code=decline_code,
        )
    if status == 429 or raw_code in _RATE_LIMIT_CODES:
        return PartnerUnavailable(
            "The payment partner is rate limiting requests; retry later.",
            code="partner_rate_limited",
            partner_request_id=request_id,
            headers={"Retry-After": "1"},
        )
    if kind == "idempotency_error" or raw_code in _IDEMPOTENCY_CODES:
        if raw_code == "idempotency_key_in_use":
            return PartnerUnavailable(
                "The payment partner is still working on this request; retry later.",
                code="partner_busy",
                partner_request_id=request_id,
                headers={"Retry-After": "1"},
            )
        return PartnerError(
            "The payment partner refused the request's idempotency key.",
            code="partner_idempotency_error",
            partner_request_id=request_id,
        )
    if status == 401 or kind == "authentication_error":
        return PartnerError(
            "The proxy's credentials were refused by the payment partner.",
            code="partner_auth_failed",
            partner_request_id=request_id,
        )
    if status == 403:
        return PartnerError(
            "The proxy's key lacks a permission this request needs at the payment partner.",
            code="partner_permission_denied",
            partner_request_id=request_id,
        )
    if status >= 500 or kind == "api_error":
        return PartnerError("The payment partner failed.", partner_request_id=request_id)
    if raw_code == "resource_missing" or status == 404:
        return PartnerError(
            "The payment partner has no such object.",
            code="partner_resource_missing",
            partner_request_id=request_id,
        )
    if kind == "invalid_request_error" or 400 <= status < 500:
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
        allow_redisplay: str | None = None,
    ) -> None:
        silence_sdk_logging()
        # Sent on every PaymentMethod create when not Stripe's default (``unspecified``):
        # whether Stripe's Checkout and Elements may show the method to the customer again
        # (https://docs.stripe.com/api/payment_methods/create#create_payment_method-allow_redisplay).
        # Left out at the default so the parameters under an idempotency key do not change.
        self.allow_redisplay = None if allow_redisplay in {None, "unspecified"} else allow_redisplay
        # Stripe's keys say their mode: sk_live_/rk_live_ act on live data, *_test_ on test
        # data (https://docs.stripe.com/keys#test-live-modes).
        self.livemode: bool | None = api_key.startswith(("sk_live_", "rk_live_"))
        # Stripe's rate limits are per account and mode (https://docs.stripe.com/rate-limits):
        # replicas with the same key share one outbound budget. A short digest, never the
        # key: the budget's row is stored in clear.
        digest = hashlib.sha256(api_key.encode()).hexdigest()[:12]
        self.budget_scope = f"{'live' if self.livemode else 'test'}:{digest}"
        # Telemetry sends Stripe the previous call's timings in a header, bookkept per
        # call under a lock; we measure partner latency ourselves (metrics).
        stripe.enable_telemetry = False
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._http = stripe.AIOHTTPClient(session=self._session, timeout=self._timeout)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            stripe_version=STRIPE_API_VERSION,
            http_client=self._http,
            # Retries belong to the proxy's own policy (idempotency keys, backoff), not the SDK's.
            max_network_retries=0,
        )
        self._requestor = self._client._requestor
        self._api_base = api_base
        # What the SDK would send with every POST (auth, Stripe-Version, its user agent,
        # the form content type), built by the SDK once instead of per call.
        headers = self._requestor.request_headers(
            "post", "V1", {"api_key": api_key, "stripe_version": STRIPE_API_VERSION}
        )
        headers.pop("Idempotency-Key", None)
        self._post_headers: dict[str, str] = dict(headers)

    async def _post(self, path: str, params: dict[str, Any], idempotency_key: str | None) -> Any:
        """POST form-encoded to Stripe's v1 API; the answer's data, or a PartnerError."""
        # Like the SDK, every POST carries an idempotency key, so a retry is safe.
        headers = {**self._post_headers, "Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        # The SDK's encoding, brackets left readable as it leaves them.
        body = urlencode(list(_api_encode(params))).replace("%5B", "[").replace("%5D", "]")
        try:
            try:
                async with self._session.post(
                    self._api_base + path,
                    data=body.encode(),
                    headers=headers,
                    timeout=self._timeout,
                ) as resp:
                    rbody = await resp.read()
                    rcode, rheaders = resp.status, resp.headers
            except Exception as exc:  # noqa: BLE001 - the SDK's own rule: any failure to talk to Stripe
                self._http._handle_request_error(exc)  # raises APIConnectionError from exc
            if 200 <= rcode < 300:
                # A success needs no classification: skip the SDK's OrderedDict parse.
                with contextlib.suppress(ValueError):
                    return json.loads(rbody)
            # Errors, and a garbled success, get the SDK's own answer.
            response = self._requestor._interpret_response(rbody, rcode, rheaders, "V1")
        except stripe.StripeError as exc:
            raise translate_error(exc) from None
        return response.data

    async def _post_or_gone(self, method: str, path: str) -> bool:
        """POST/DELETE that may find its object already gone: False then, else True."""
        try:
            await self._client.raw_request_async(method, path)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404 or exc.code in _GONE_CODES:
                return False
            raise translate_error(exc) from None
        except stripe.StripeError as exc:
            raise translate_error(exc) from None
        return True

    async def create_card(
        self,
        card: CardRequest,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
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
        billing: dict[str, Any] = {}
        if card.holder_name:
            billing["name"] = card.holder_name
        if card.postal_code:
            # For the issuer's address verification (AVS); personal data, never logged.
            billing["address"] = {"postal_code": card.postal_code}
        if billing:
            # https://docs.stripe.com/api/payment_methods/create#create_payment_method-billing_details
            params["billing_details"] = billing
        if self.allow_redisplay is not None:
            params["allow_redisplay"] = self.allow_redisplay
        if metadata:
            # https://docs.stripe.com/metadata: for reconciliation and support; never
            # card data (Stripe's own rule too).
            params["metadata"] = dict(metadata)
        data = await self._post("/v1/payment_methods", params, idempotency_key)
        try:
            details = data["card"]
            livemode = data.get("livemode")
            return PartnerCard(
                reference=str(data["id"]),
                fingerprint=details.get("fingerprint"),
                last4=str(details["last4"]),
                partner_brand=_word(details.get("brand")),
                # https://docs.stripe.com/api/payment_methods/object#payment_method_object-card
                display_brand=_word(details.get("display_brand")),
                funding=_word(details.get("funding")),
                country=_country(details.get("country")),
                exp_month=_small_int(details.get("exp_month")),
                exp_year=_small_int(details.get("exp_year")),
                livemode=livemode if isinstance(livemode, bool) else None,
            )
        except (KeyError, TypeError):
            raise _bad_response() from None

    async def create_sepa_debit(
        self,
        account: BankAccountRequest,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PartnerBankAccount:
        """Create a sepa_debit PaymentMethod; the IBAN leaves the process only here."""
        billing: dict[str, str] = {"name": account.holder_name}
        if account.email is not None:
            billing["email"] = account.email  # Stripe needs it before a SEPA charge
        params: dict[str, Any] = {
            "type": "sepa_debit",
            "sepa_debit": {"iban": account.iban.value},
            "billing_details": billing,
        }
        if self.allow_redisplay is not None:
            params["allow_redisplay"] = self.allow_redisplay
        if metadata:
            params["metadata"] = dict(metadata)  # never the IBAN
        data = await self._post("/v1/payment_methods", params, idempotency_key)
        try:
            details = data["sepa_debit"]
            livemode = data.get("livemode")
            return PartnerBankAccount(
                reference=str(data["id"]),
                fingerprint=details.get("fingerprint"),
                country=str(details.get("country") or account.iban.country),
                bank_code=details.get("bank_code"),
                last4=str(details["last4"]),
                livemode=livemode if isinstance(livemode, bool) else None,
            )
        except (KeyError, TypeError):
            raise _bad_response() from None

    async def create_customer(self, *, idempotency_key: str | None = None) -> str:
        """Create a customer holding no personal fields; the mapping stays in our vault."""
        params: dict[str, Any] = {"metadata": {"created_by": "tokenproxy"}}
        data = await self._post("/v1/customers", params, idempotency_key)
        reference = data.get("id") if isinstance(data, dict) else None
        if not isinstance(reference, str) or not _OBJECT_ID_RE.fullmatch(reference):
            raise _bad_response()
        return reference

    async def delete_customer(self, reference: str) -> bool:
        """Delete a customer (Stripe detaches what is attached to it); False if gone."""
        return await self._post_or_gone("delete", f"/v1/customers/{_object_id(reference)}")

    async def attach(self, payment_method: str, customer: str) -> None:
        """Attach a PaymentMethod to a customer; a refusal is PartnerDeclined (402)."""
        await self._post(
            f"/v1/payment_methods/{_object_id(payment_method)}/attach",
            {"customer": _object_id(customer)},
            None,
        )

    async def setup_off_session(
        self,
        payment_method: str,
        customer: str,
        *,
        kind: str,
        mandate: MandateAcceptance | None = None,
        return_url: str | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> PartnerSetup:
        """Confirm a SetupIntent (usage off_session) that saves the method on the customer.

        Stripe attaches the payment method to the customer once the setup succeeds and,
        with ``mandate_data``, creates the SEPA mandate an off-session debit needs
        (https://docs.stripe.com/api/setup_intents/create,
        https://docs.stripe.com/payments/sepa-debit/set-up-payment). A card whose issuer
        wants the cardholder comes back ``requires_action``; with a ``return_url`` its
        ``next_action`` is a page to send the shopper to.
        """
        params: dict[str, Any] = {
            "customer": _object_id(customer),
            "payment_method": _object_id(payment_method),
            "payment_method_types": [kind],
            "usage": "off_session",
            "confirm": True,
        }
        if mandate is not None:
            params["mandate_data"] = {
                "customer_acceptance": {
                    "type": "online",
                    "accepted_at": mandate.accepted_at,
                    "online": {"ip_address": mandate.ip_address, "user_agent": mandate.user_agent},
                }
            }
        if return_url is not None:
            params["return_url"] = return_url
        if metadata:
            params["metadata"] = dict(metadata)
        return _setup(await self._post("/v1/setup_intents", params, idempotency_key))

    async def get_setup(self, intent: str) -> PartnerSetup:
        """Retrieve a SetupIntent, e.g. after the shopper completed its next_action."""
        try:
            response = await self._client.raw_request_async(
                "get", f"/v1/setup_intents/{_object_id(intent)}"
            )
        except stripe.StripeError as exc:
            raise translate_error(exc) from None
        return _setup(response.data)

    async def detach(self, payment_method: str) -> bool:
        """Detach a PaymentMethod; False when it is gone or attached to no customer.

        Stripe refuses to detach a PaymentMethod saved on no customer with a 400 ("not
        attached to a customer so detachment is impossible",
        https://docs.stripe.com/api/payment_methods/detach) that carries no code of its
        own; the method itself then says whether that was the reason.
        """
        path = f"/v1/payment_methods/{_object_id(payment_method)}/detach"
        try:
            return await self._post_or_gone("post", path)
        except PartnerError as exc:
            if exc.partner_status != 400:
                raise
            current = await self.get_payment_method(payment_method)
            if current is None or current.customer is None:
                return False
            raise

    async def list_payment_methods(self, customer: str, *, kind: str) -> list[PartnerPaymentMethod]:
        """Every payment method of type ``kind`` attached to ``customer``, page by page."""
        if not _WORD_RE.fullmatch(kind):
            raise PartnerError("A payment method type is malformed.", code="partner_bad_reference")
        params = {"customer": _object_id(customer), "type": kind}
        return [_payment_method(item) async for item in self._list("/v1/payment_methods", params)]

    async def get_payment_method(self, reference: str) -> PartnerPaymentMethod | None:
        """Retrieve a payment method; None when the partner no longer has it."""
        try:
            response = await self._client.raw_request_async(
                "get", f"/v1/payment_methods/{_object_id(reference)}"
            )
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return None
            raise translate_error(exc) from None
        except stripe.StripeError as exc:
            raise translate_error(exc) from None
        return _payment_method(response.data)

    async def count_subscriptions(self, customer: str) -> int:
        """Subscriptions of a customer that deleting it would cancel, page by page.

        https://docs.stripe.com/api/subscriptions/list lists those not canceled when no
        ``status`` is given; https://docs.stripe.com/api/customers/delete: deleting a
        customer "immediately cancels any active subscriptions on the customer".
        """
        params = {"customer": _object_id(customer)}
        return sum([1 async for _ in self._list("/v1/subscriptions", params)])

    async def _list(self, path: str, params: dict[str, Any]) -> AsyncIterator[Any]:
        """Every object of a Stripe list, page by page (https://docs.stripe.com/api/pagination)."""
        after: str | None = None
        while True:
            page = {**params, "limit": 100}
            if after is not None:
                page["starting_after"] = after
            try:
                response = await self._client.raw_request_async("get", path, **page)
            except stripe.StripeError as exc:
                raise translate_error(exc) from None
            data = response.data
            items = data.get("data") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise _bad_response()
            for item in items:
                yield item
            last = _ref(items[-1].get("id")) if items and isinstance(items[-1], dict) else None
            if not data.get("has_more") or last is None:
                return
            after = last

    async def close(self) -> None:
        """Close the HTTP session when this adapter owns it."""
        if self._own_session:
            await self._session.close()


def _object_id(reference: str) -> str:
    """A partner id safe to put in a URL path; anything else is our bug, not input."""
    if not _OBJECT_ID_RE.fullmatch(reference):
        raise PartnerError("A stored partner reference is malformed.", code="partner_bad_reference")
    return reference


def _setup(data: Any) -> PartnerSetup:
    """A SetupIntent as our storable view; anything off-shape is a bad response."""
    if not isinstance(data, dict):
        raise _bad_response()
    intent, status = data.get("id"), data.get("status")
    mandate = data.get("mandate")
    if isinstance(mandate, dict):  # expanded
        mandate = mandate.get("id")
    if (
        not isinstance(intent, str)
        or not _OBJECT_ID_RE.fullmatch(intent)
        or not isinstance(status, str)
        or not _WORD_RE.fullmatch(status)
        or (
            mandate is not None
            and not (isinstance(mandate, str) and _MANDATE_ID_RE.fullmatch(mandate))
        )
    ):
        raise _bad_response()
    return PartnerSetup(
        intent=intent,
        status=status,
        payment_method=_ref(data.get("payment_method")),
        customer=_ref(data.get("customer")),
        mandate=mandate,
        next_action=_next_action(data.get("next_action")) if status == "requires_action" else None,
    )


def _ref(value: Any) -> str | None:
    """An object id, whether the field was expanded or not."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and _OBJECT_ID_RE.fullmatch(value) else None


def _next_action(raw: Any) -> dict[str, Any] | None:
    """The partner's next_action reduced to its type and, for a redirect, the two URLs.

    Only fields we name pass: the rest of a next_action (SDK payloads, client secrets)
    is not the checkout's business, and a URL holding a card-number-like run is dropped
    rather than handed on.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        return None
    kind = raw["type"]
    if not _WORD_RE.fullmatch(kind):
        return None
    action: dict[str, Any] = {"type": kind}
    redirect = raw.get("redirect_to_url")
    if kind == "redirect_to_url" and isinstance(redirect, dict):
        urls = {
            name: value
            for name in ("url", "return_url")
            if isinstance(value := redirect.get(name), str)
            and value.startswith(("https://", "http://"))
            and len(value) <= 2048
            and not pan_like(value)
        }
        if "url" not in urls:
            return None
        action["redirect_to_url"] = urls
    return action


def _payment_method(data: Any) -> PartnerPaymentMethod:
    """A listed payment method reduced to its storable fields; off-shape is a bad response."""
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise _bad_response()
    reference, kind = _ref(data.get("id")), data["type"]
    if reference is None or not _WORD_RE.fullmatch(kind):
        raise _bad_response()
    found = data.get(kind)
    details: dict[str, Any] = found if isinstance(found, dict) else {}
    last4 = details.get("last4")
    return PartnerPaymentMethod(
        reference=reference,
        kind=kind,
        customer=_ref(data.get("customer")),
        last4=last4 if isinstance(last4, str) and re.fullmatch(r"[0-9]{4}", last4) else None,
        exp_month=_small_int(details.get("exp_month")),
        exp_year=_small_int(details.get("exp_year")),
        fingerprint=_ref(details.get("fingerprint")),
    )


def _country(value: Any) -> str | None:
    """A two-letter country code as Stripe sends it, else None."""
    return value if isinstance(value, str) and re.fullmatch(r"[A-Z]{2}", value) else None


def _small_int(value: Any) -> int | None:
    """An expiry field as an int (localstripe answers strings where Stripe answers numbers)."""
    if isinstance(value, str) and value.isdigit() and len(value) <= 4:
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bad_response() -> PartnerError:
    return PartnerError(
        "The payment partner answered in an unexpected shape.", code="partner_bad_response"
    )
