"""The client's exceptions, mirroring the proxy's error tree (proxy/domain/errors.py).

::

    TokenProxyError                     (any failure; status/type/code/request_id when known)
    ├── APIConnectionError              (no HTTP answer: refused, reset, DNS)
    │   └── APITimeoutError             (no answer in time)
    ├── InvalidRequestError             (400, 405, 408, 410, 413, 415, 417 invalid_request_error)
    │   ├── NotFoundError               (404)
    │   ├── ValidationError             (422)
    │   └── ConflictError               (409)
    │       └── IdempotencyError        (idempotency_error: 422 key reused with another body,
    │                                    409 in use, 410 erased with its customer: use a new key)
    ├── CardError                       (402 declined, 422 card_error)
    ├── AuthenticationError             (401)
    ├── PermissionDeniedError           (403)
    ├── RateLimitError                  (429; retry_after seconds)
    ├── PartnerError                    (502 partner_error)
    │   ├── PartnerUnavailableError     (503 partner_error)
    │   └── PartnerTimeoutError         (504 partner_error)
    └── APIError                        (500, and anything unknown)
        └── ServiceUnavailableError     (503 api_error: vault down, record unreadable)

``error_for`` picks the class from the status and the body's ``type``; the body's
``code``, ``param``, ``message`` and ``request_id`` are kept on the exception.
"""

from __future__ import annotations

from typing import Any, Final

# The error types and codes this client gives a meaning of its own (an exception class, a
# retry, a raised code, a documented next step); each is one the proxy's OpenAPI document lists.
CARD_ERROR: Final = "card_error"
PARTNER_ERROR: Final = "partner_error"
IDEMPOTENCY_ERROR: Final = "idempotency_error"
KNOWN_TYPES: Final = frozenset({CARD_ERROR, PARTNER_ERROR, IDEMPOTENCY_ERROR})

IDEMPOTENCY_KEY_IN_USE: Final = "idempotency_key_in_use"
MISSING_SCOPE: Final = "missing_scope"
AUTHENTICATION_REQUIRED: Final = "authentication_required"
KNOWN_CODES: Final = frozenset({IDEMPOTENCY_KEY_IN_USE, MISSING_SCOPE, AUTHENTICATION_REQUIRED})


class TokenProxyError(Exception):
    """Base of every error the client raises."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.headers = headers or {}

    def __str__(self) -> str:
        parts = [self.message]
        if self.code:
            parts.append(f"code={self.code}")
        if self.status:
            parts.append(f"status={self.status}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " | ".join(parts)


class APIConnectionError(TokenProxyError):
    """The proxy could not be reached, or the connection broke before an answer."""


class APITimeoutError(APIConnectionError):
    """The proxy did not answer in time."""


class InvalidRequestError(TokenProxyError):
    """The request was malformed or named something that does not exist."""


class NotFoundError(InvalidRequestError):
    """No such token, customer or route (404)."""


class ValidationError(InvalidRequestError):
    """A value broke a rule (422)."""


class ConflictError(InvalidRequestError):
    """The request conflicts with the current state (409)."""


class IdempotencyError(ConflictError):
    """An Idempotency-Key was reused with another body (422), is in use by a concurrent
    request (409), or belongs to an erased customer (410)."""


class CardError(TokenProxyError):
    """The card was refused: by our validation (422) or declined by the partner (402).

    With ``code == "authentication_required"`` the card is not refused but waits for its
    holder: send the shopper to ``next_action`` (``redirect_to_url.url``), then call
    ``confirm_card(setup)``.
    """

    setup: str | None = None
    next_action: dict[str, Any] | None = None


class AuthenticationError(TokenProxyError):
    """The key is missing or not valid (401)."""


class PermissionDeniedError(TokenProxyError):
    """The key lacks the scope, or a publishable key was used from another origin (403)."""


class RateLimitError(TokenProxyError):
    """Too many requests (429); ``retry_after`` seconds, when the proxy said."""

    @property
    def retry_after(self) -> float | None:
        """Seconds the proxy asked us to wait, if it said."""
        return _seconds(self.headers.get("Retry-After"))


class PartnerError(TokenProxyError):
    """The payment partner failed or refused our credentials (502)."""


class PartnerUnavailableError(PartnerError):
    """The payment partner is unreachable or rate limiting us (503)."""


class PartnerTimeoutError(PartnerError):
    """The payment partner did not answer in time (504)."""


class APIError(TokenProxyError):
    """The proxy failed (500) or answered something this client does not know."""


class ServiceUnavailableError(APIError):
    """The proxy cannot serve now: vault unavailable, or a record failed authentication (503)."""


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


_BY_STATUS: dict[int, type[TokenProxyError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: CardError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: InvalidRequestError,
    408: InvalidRequestError,
    409: ConflictError,
    410: InvalidRequestError,
    413: InvalidRequestError,
    415: InvalidRequestError,
    417: InvalidRequestError,
    422: ValidationError,
    429: RateLimitError,
    502: PartnerError,
    503: ServiceUnavailableError,
    504: PartnerTimeoutError,
}


def error_for(status: int, body: Any, headers: dict[str, str]) -> TokenProxyError:
    """The exception for an error answer: class from status and ``type``, fields from the body."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    kind = error.get("type") if isinstance(error.get("type"), str) else None
    cls: type[TokenProxyError] = _BY_STATUS.get(status, APIError)
    if kind == CARD_ERROR:
        cls = CardError
    elif status == 503 and kind == PARTNER_ERROR:
        cls = PartnerUnavailableError
    elif kind == IDEMPOTENCY_ERROR or (
        status in {409, 410} and "idempotency" in str(error.get("code"))
    ):
        cls = IdempotencyError
    message = error.get("message")
    exc = cls(
        message if isinstance(message, str) else f"tokenproxy answered HTTP {status}",
        status=status,
        type=kind,
        code=_str_or_none(error.get("code")),
        param=_str_or_none(error.get("param")),
        request_id=_str_or_none(error.get("request_id")) or headers.get("X-Request-Id"),
        headers=headers,
    )
    if isinstance(exc, CardError):
        exc.setup = _str_or_none(error.get("setup"))
        action = error.get("next_action")
        exc.next_action = action if isinstance(action, dict) else None
    return exc


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
