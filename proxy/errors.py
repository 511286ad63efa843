"""The proxy's error tree: every failure a client can see, with its HTTP status.

::

    ProxyError                      (500 api_error / internal_error)
    ├── InvalidRequest              (400 invalid_request_error)
    │   ├── RequestTimeout          (408: the body arrived too slowly)
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
    ├── RateLimited                 (429 rate_limit_error)
    ├── PartnerError                (502 partner_error)
    │   ├── PartnerDeclined         (402 card_error)
    │   ├── PartnerUnavailable      (503 partner_error)
    │   └── PartnerTimeout          (504 partner_error)
    └── ServiceUnavailable          (503 api_error)

``proxy.middleware`` is the one place these become HTTP responses. Messages are
written by us where raised and never carry submitted values or library text.
"""

from __future__ import annotations

from typing import ClassVar


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


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class RequestTimeout(InvalidRequest):
    status = 408
    default_code = "request_timeout"


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


class PartnerDeclined(PartnerError):
    status = 402
    type = "card_error"
    default_code = "card_declined"


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
