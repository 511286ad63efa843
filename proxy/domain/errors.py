"""The proxy's error tree: every failure a client can see, with its HTTP status.

::

    ProxyError                      (500 api_error / internal_error)
    ├── InvalidRequest              (400 invalid_request_error)
    │   ├── RequestTimeout          (408: the body arrived too slowly)
    │   ├── InvalidSignature        (400: a partner event not signed by a configured secret)
    │   ├── UnsupportedMediaType    (415)
    │   ├── ExpectationFailed       (417: an Expect other than 100-continue)
    │   ├── PayloadTooLarge         (413)
    │   └── ValidationFailed        (422; card_error for card fields)
    ├── AuthenticationFailed        (401 authentication_error)
    ├── PermissionDenied            (403 permission_error)
    ├── NotFound                    (404 invalid_request_error)
    ├── MethodNotAllowed            (405 invalid_request_error)
    ├── Conflict                    (409 invalid_request_error / conflict)
    │   └── IdempotencyKeyInUse     (409 idempotency_error: the key's first request still runs)
    ├── IdempotencyKeyReused        (422 idempotency_error)
    ├── IdempotencyKeyErased        (410 idempotency_error: its customer was erased)
    ├── TokenGone                   (410 invalid_request_error: detached or mandate revoked)
    ├── RateLimited                 (429 rate_limit_error)
    ├── PartnerError                (502 partner_error)
    │   ├── PartnerDeclined         (402 card_error)
    │   ├── AuthenticationRequired  (402 card_error: the shopper must authenticate first)
    │   ├── PartnerUnavailable      (503 partner_error)
    │   └── PartnerTimeout          (504 partner_error)
    └── ServiceUnavailable          (503 api_error)

``proxy.web.middleware`` is the one place these become HTTP responses. Messages are
written by us where raised and never carry submitted values or library text.
"""

from __future__ import annotations

import json
import re
from typing import ClassVar

# The one media type of every JSON answer, fresh or replayed, success or error.
JSON_CONTENT_TYPE = "application/json"
JSON_CHARSET = "utf-8"
# 4xx answers a retry of the same request can change: a body that arrived too slowly,
# a key still in flight, a rate limit. Every other 4xx is the request's final answer.
_TRANSIENT_4XX = frozenset({408, 409, 429})
_SAFE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def echoable(name: object) -> str | None:
    """A client-sent name (a field, a query parameter) safe to return as ``param``, or None."""
    if not isinstance(name, str):
        return None
    # A key can itself be a PAN; a handful of digits is the most we echo.
    if _SAFE_NAME_RE.fullmatch(name) is None or sum(c.isdigit() for c in name) >= 6:
        return None
    return name[:40]


# Every ``code`` an error body can carry; the OpenAPI document lists exactly these, and
# tests/web/test_openapi_generated.py checks them against every raise site.
ERROR_CODES: frozenset[str] = frozenset(
    {
        # The request's shape (proxy.domain.decode) and its transport (proxy.web).
        "invalid_request", "invalid_body", "invalid_json", "json_too_deep", "unknown_field",
        "missing_field", "invalid_type", "invalid_value", "unknown_parameter",
        "duplicate_parameter", "malformed_request", "header_too_large", "request_timeout",
        "payload_too_large", "unsupported_media_type", "unsupported_content_encoding",
        "invalid_content_encoding", "expectation_failed", "route_not_found",
        "method_not_allowed", "resource_missing", "conflict",
        # Cards.
        "invalid_number", "unsupported_brand", "invalid_expiry_month", "invalid_expiry_year",
        "expired_card", "invalid_cvc", "invalid_holder_name", "invalid_postal_code",
        "invalid_setup", "setup_expired",
        "setup_failed", "customer_changed",
        # Fields beside card data.
        "invalid_customer_ref", "invalid_return_url", "metadata_too_many_keys",
        "metadata_invalid_key", "metadata_forbidden_key", "metadata_value_too_long",
        "metadata_contains_card_number", "metadata_contains_account_number",
        # Bank accounts.
        "invalid_iban", "unsupported_country", "invalid_iban_length", "invalid_iban_checksum",
        "invalid_email", "invalid_ip_address", "invalid_user_agent", "invalid_accepted_at",
        # Invoices.
        "invalid_invoice_number", "invalid_ocr_reference", "ocr_reference_card_like",
        "invalid_ocr_length_digit", "invalid_amount", "invalid_currency", "invalid_date",
        "unsupported_partner", "invalid_partner_reference",
        # Customers and listing.
        "invalid_limit", "invalid_cursor", "customer_not_found", "erasure_incomplete",
        # Credentials, origins and idempotency.
        "invalid_api_key", "missing_api_key", "missing_scope", "auth_throttled",
        "client_certificate_required",
        "publishable_key_restricted", "origin_not_allowed", "cors_method_not_allowed",
        "cors_header_not_allowed", "invalid_idempotency_key", "idempotency_key_in_use",
        "idempotency_key_reused", "idempotency_key_erased", "rate_limited",
        # The payment partner, and Stripe's card codes passed through (never input).
        "partner_error", "partner_unavailable", "partner_timeout", "partner_rate_limited",
        "partner_auth_failed", "partner_rejected_request", "partner_bad_response",
        "partner_bad_reference", "partner_circuit_open", "partner_budget_exhausted",
        "partner_mismatch", "card_declined",
        "partner_busy", "partner_idempotency_error", "partner_permission_denied",
        "partner_resource_missing", "partner_mode_mismatch", "partner_customer_deleted",
        "authentication_required", "incorrect_cvc", "incorrect_number", "incorrect_zip",
        "processing_error",
        "card_not_supported", "setup_intent_authentication_failure",
        # The proxy itself.
        "internal_error", "service_unavailable", "vault_unavailable", "record_unreadable",
        "audit_unavailable",
        # Partner sync: tokens the partner detached, and signed partner events.
        "token_detached", "mandate_revoked", "invalid_signature", "webhooks_not_configured",
    }
)  # fmt: skip


class ProxyError(Exception):
    """Base of every error the proxy renders; carries a stable code and an HTTP status."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.headers = headers or {}

    def body(self, request_id: str | None) -> dict[str, object]:
        """The JSON error body (without any submitted value)."""
        return {
            "error": {
                "type": self.type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "request_id": request_id,
            }
        }

    def rendered(self, request_id: str | None) -> bytes:
        """The response body as sent: the one rendering, so a stored copy is byte-identical."""
        return json.dumps(self.body(request_id)).encode()

    @property
    def final(self) -> bool:
        """Whether the same request would get this answer again (idempotent replays keep it).

        Client errors are final (a decline, a refused value), except the transient ones;
        5xx never are: the partner or the vault may answer differently on a retry.
        """
        return 400 <= self.status < 500 and self.status not in _TRANSIENT_4XX


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class RequestTimeout(InvalidRequest):
    status = 408
    default_code = "request_timeout"


class InvalidSignature(InvalidRequest):
    """An event without a valid, fresh signature by a configured secret (400)."""

    default_code = "invalid_signature"

    def __init__(self, reason: str) -> None:
        super().__init__("The event's Stripe-Signature is missing, invalid or stale.")
        # For the counter's label only, never rendered: missing, invalid, stale or malformed.
        self.reason = reason


class UnsupportedMediaType(InvalidRequest):
    status = 415
    default_code = "unsupported_media_type"


class ExpectationFailed(InvalidRequest):
    status = 417
    default_code = "expectation_failed"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "payload_too_large"


class ValidationFailed(InvalidRequest):
    """Well-formed JSON whose values break a rule (Luhn, expiry, metadata, ...)."""

    status = 422
    default_code = "invalid_value"


class CardValidationFailed(ValidationFailed):
    type = "card_error"


class AuthenticationFailed(ProxyError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status = 403
    type = "permission_error"
    default_code = "missing_scope"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    default_code = "resource_missing"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class Conflict(ProxyError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class IdempotencyKeyInUse(Conflict):
    type = "idempotency_error"
    default_code = "idempotency_key_in_use"


class IdempotencyKeyReused(ProxyError):
    """The Idempotency-Key was first used with another body (Stripe refuses this too)."""

    status = 422
    type = "idempotency_error"
    default_code = "idempotency_key_reused"


class IdempotencyKeyErased(ProxyError):
    """The key's request belonged to a customer since erased: its answer is gone for good."""

    status = 410
    type = "idempotency_error"
    default_code = "idempotency_key_erased"


class TokenGone(ProxyError):
    """The partner detached the token's payment method (or revoked its mandate): no charge."""

    status = 410
    type = "invalid_request_error"
    default_code = "token_detached"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limited"


class PartnerError(ProxyError):
    """The payment partner failed in a way the client cannot fix by changing input."""

    status = 502
    type = "partner_error"
    default_code = "partner_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        partner_request_id: str | None = None,
        decline_code: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param, headers=headers)
        self.partner_request_id = partner_request_id
        self.decline_code = decline_code
        # Stripe's rule: only network errors, 409, 429 and 5xx may be retried (with the
        # same idempotency key). Card errors and other 4xx would fail the same way again.
        self.retryable = retryable
        self.retry_after = retry_after
        # The partner's HTTP status when it answered at all (None: no answer, or not
        # from the partner): a 5xx it answered is stored against the idempotency key.
        self.partner_status: int | None = None
        # The partner's own ``param`` (a parameter name such as ``customer``), for the
        # proxy's decisions and logs; never rendered (``param`` names the client's field).
        self.partner_param: str | None = None


class PartnerDeclined(PartnerError):
    status = 402
    type = "card_error"
    default_code = "card_declined"


class AuthenticationRequired(PartnerError):
    """Saving a card needs the cardholder to authenticate (3-D Secure) before it is usable.

    Not a decline: no token is issued yet. The body carries the partner's ``next_action``
    (reduced to fields without card data) and an opaque ``setup`` the checkout sends to
    ``POST /v1/cards/confirm`` once the shopper has completed it.
    """

    status = 402
    type = "card_error"
    default_code = "authentication_required"

    def __init__(self, *, setup: str, next_action: dict[str, object] | None) -> None:
        super().__init__(
            "The card issuer requires the cardholder to authenticate before the card is saved. "
            "Complete next_action, then confirm the setup."
        )
        self.setup = setup
        self.next_action = next_action

    def body(self, request_id: str | None) -> dict[str, object]:
        """The error body plus the setup to confirm and the partner's next action."""
        body = super().body(request_id)
        error = body["error"]
        assert isinstance(error, dict)  # noqa: S101 - ProxyError.body's shape
        error["setup"] = self.setup
        error["next_action"] = self.next_action
        return body


class PartnerUnavailable(PartnerError):
    status = 503
    default_code = "partner_unavailable"


class PartnerTimeout(PartnerError):
    status = 504
    default_code = "partner_timeout"


class ServiceUnavailable(ProxyError):
    status = 503
    type = "api_error"
    default_code = "service_unavailable"
