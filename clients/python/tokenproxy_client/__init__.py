"""An async client for tokenproxy, for billing and order services (and server-side tests).

::

    async with TokenProxyClient("https://tokens.internal", api_key) as proxy:
        card = await proxy.resolve("vtok_card_...")
        charge(card.partner_reference)

Public API only; the modules behind it are private.
"""

from tokenproxy_client._client import DEFAULT_RETRY_STATUSES, RetryPolicy, TokenProxyClient
from tokenproxy_client._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    CardError,
    ConflictError,
    IdempotencyError,
    InvalidRequestError,
    NotFoundError,
    PartnerError,
    PartnerTimeoutError,
    PartnerUnavailableError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    TokenProxyError,
    ValidationError,
)
from tokenproxy_client._models import (
    BankAccountToken,
    CardToken,
    CustomerErasure,
    CustomerExport,
    Deletion,
    InvoiceToken,
    ResolvedToken,
    TokenView,
)

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BankAccountToken",
    "CardError",
    "CardToken",
    "ConflictError",
    "CustomerErasure",
    "CustomerExport",
    "Deletion",
    "IdempotencyError",
    "InvalidRequestError",
    "InvoiceToken",
    "NotFoundError",
    "PartnerError",
    "PartnerTimeoutError",
    "PartnerUnavailableError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResolvedToken",
    "RetryPolicy",
    "ServiceUnavailableError",
    "TokenProxyClient",
    "TokenProxyError",
    "TokenView",
    "ValidationError",
]
