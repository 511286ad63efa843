"""The API's operations, declared once: the route table, the OpenAPI document and the
query parameters each route takes are all made from ``OPERATIONS``.

Bodies, path and query parameters are the Structs of :mod:`proxy.domain.schemas`; what
is declared here is HTTP: method, path, statuses, headers, and the words of the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from msgspec import Struct

from proxy.domain.decode import field_names
from proxy.domain.schemas import (
    TOKEN_VIEWS,
    AssetPath,
    BankAccountRequestBody,
    BankToken,
    CardConfirmRequestBody,
    CardRequestBody,
    CardToken,
    CustomerExport,
    CustomerPath,
    Erasure,
    ErasurePreview,
    InvoiceRequestBody,
    InvoiceToken,
    PartnerEventReceipt,
    TokenAttachRequestBody,
    TokenDeletion,
    TokenList,
    TokenListQuery,
    TokenPath,
)

# Every status a body-carrying POST can end in besides its 2xx.
_POST_ERRORS: Final = (400, 401, 403, 405, 408, 409, 413, 415, 422, 429, 503)


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path, as routed and as documented."""

    method: str
    path: str  # aiohttp's spelling: a constrained variable is {name:regex}
    name: str  # the route's name, and the handler's key in proxy.web.routes
    operation_id: str
    summary: str
    status: int
    response: type[Struct] | tuple[type[Struct], ...] | None
    response_description: str
    errors: tuple[int, ...]
    description: str | None = None
    request: type[Struct] | None = None
    path_params: type[Struct] | None = None
    query: type[Struct] | None = None
    # Takes an Idempotency-Key; its 2xx may then be a replay (Idempotent-Replayed: true).
    idempotent: bool = False
    # Needs no client key (pages and scripts for browsers, this document, CORS preflights).
    public: bool = False
    # Answered by the CORS middleware, not by a route.
    preflight: bool = False
    # A 2xx that is not JSON: its media type (None: not described further).
    media_type: str | None = "application/json"
    # Served on the public listener too (what browsers and the checkout reach); every
    # operation is served on the internal listener (proxy.web.listeners).
    public_listener: bool = False

    @property
    def template(self) -> str:
        """The path as the route's template and the document spell it: ``{name}``."""
        return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", self.path)


_IDEMPOTENCY = (
    "Idempotency-Key: the final answer (2xx, or a client error such as a 402 decline) is"
    " stored and replayed for the same key and body, byte for byte, marked"
    " Idempotent-Replayed: true; another body is 422 idempotency_key_reused, a key still"
    " in flight 409 idempotency_key_in_use, a key whose customer was erased 410"
    " idempotency_key_erased. Keys are scoped per client and expire after 24 h."
)


def _preflight(path: str, name: str) -> Operation:
    return Operation(
        method="options",
        path=path,
        name=f"{name}_preflight",
        operation_id=f"{name}Preflight",
        summary="CORS preflight (origins from TOKENPROXY_CORS_ORIGINS)",
        status=204,
        response=None,
        response_description="Allowed",
        errors=(403,),
        public=True,
        preflight=True,
        media_type=None,
        public_listener=True,
    )


OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        method="post",
        path="/v1/cards",
        name="create_card",
        operation_id="createCard",
        summary="Tokenize a card (scope: tokenize)",
        description=_IDEMPOTENCY
        + " With customer_ref the card is saved on the customer for off-session charges;"
        " when its issuer wants the cardholder to authenticate the answer is 402"
        " authentication_required with error.next_action and error.setup, and no token:"
        " send the shopper through next_action, then POST /v1/cards/confirm.",
        request=CardRequestBody,
        status=201,
        response=CardToken,
        response_description="Tokenized (or the replay of a stored answer)",
        errors=(*_POST_ERRORS, 402, 410, 502, 504),
        idempotent=True,
        public_listener=True,
    ),
    _preflight("/v1/cards", "createCard"),
    Operation(
        method="post",
        path="/v1/cards/confirm",
        name="confirm_card",
        operation_id="confirmCard",
        summary="Token of a card whose holder completed authentication (tokenize)",
        description="Send error.setup from a 402 authentication_required answer once the"
        " shopper is back from next_action. The proxy asks the partner: 201 with the card"
        " token when the setup succeeded; 402 authentication_required again while it has"
        " not; 402 setup_failed when it failed; 400 invalid_setup/setup_expired; 409"
        " customer_changed when the customer was erased meanwhile. Idempotency-Key: as on"
        " POST /v1/cards.",
        request=CardConfirmRequestBody,
        status=201,
        response=CardToken,
        response_description="The card's token",
        errors=(*_POST_ERRORS, 402, 410, 502, 504),
        idempotent=True,
        public_listener=True,
    ),
    Operation(
        method="get",
        path="/v1/tokens/{token}",
        name="get_token",
        operation_id="getToken",
        summary="Read a token (scope: read for the masked view, resolve for more)",
        path_params=TokenPath,
        status=200,
        response=TOKEN_VIEWS,
        response_description="The token's view",
        errors=(400, 401, 403, 404, 405, 410, 429, 503),
        description="A resolve of a token whose payment method the partner detached is 410"
        " token_detached; of a bank token whose SEPA mandate was revoked, 410 mandate_revoked.",
    ),
    Operation(
        method="delete",
        path="/v1/tokens/{token}",
        name="delete_token",
        operation_id="deleteToken",
        summary="Delete one token, detaching it at the partner first (scope: delete)",
        path_params=TokenPath,
        status=200,
        response=TokenDeletion,
        response_description="Deleted",
        errors=(400, 401, 403, 404, 405, 429, 502, 503, 504),
    ),
    Operation(
        method="post",
        path="/v1/tokens/{token}/attach",
        name="attach_token",
        operation_id="attachToken",
        summary="Save a single-use card token on a customer (scope: tokenize, secret keys)",
        description="A card tokenized without customer_ref (the hosted card fields send"
        " none) is single-use at the partner (reusable: false). This saves it on the"
        " customer the same way POST /v1/cards with customer_ref does (the partner's"
        " off-session setup, 3-D Secure included: 402 authentication_required, then POST"
        " /v1/cards/confirm). The answer is a new, reusable token; the single-use token is"
        " deleted. A token already saved on this customer answers its own view; on another,"
        " 409 conflict. Publishable keys: 403. Idempotency-Key: as on POST /v1/cards.",
        path_params=TokenPath,
        request=TokenAttachRequestBody,
        status=201,
        response=CardToken,
        response_description="The reusable token (or the replay of a stored answer)",
        errors=(*_POST_ERRORS, 402, 404, 410, 502, 504),
        idempotent=True,
    ),
    Operation(
        method="post",
        path="/v1/bank-accounts",
        name="create_bank_account",
        operation_id="createBankAccount",
        summary="Tokenize an IBAN as a SEPA debit payment method (scope: tokenize)",
        description="Idempotency-Key: as on POST /v1/cards.",
        request=BankAccountRequestBody,
        status=201,
        response=BankToken,
        response_description="Tokenized (or the replay of a stored answer)",
        errors=(*_POST_ERRORS, 402, 410, 502, 504),
        idempotent=True,
        public_listener=True,
    ),
    _preflight("/v1/bank-accounts", "createBankAccount"),
    Operation(
        method="post",
        path="/v1/invoices",
        name="create_invoice",
        operation_id="createInvoice",
        summary="Store an invoice reference (scope: invoice)",
        description="Idempotency-Key: as on POST /v1/cards.",
        request=InvoiceRequestBody,
        status=201,
        response=InvoiceToken,
        response_description="Stored (or the replay of a stored answer)",
        errors=(*_POST_ERRORS, 410),
        idempotent=True,
    ),
    Operation(
        method="get",
        path="/v1/customers/{customer_ref}/tokens",
        name="list_customer_tokens",
        operation_id="listCustomerTokens",
        summary="A customer's tokens, masked, oldest first (scope: read)",
        path_params=CustomerPath,
        query=TokenListQuery,
        status=200,
        response=TokenList,
        response_description="One page",
        errors=(400, 401, 403, 405, 422, 429, 503),
    ),
    Operation(
        method="get",
        path="/v1/customers/{customer_ref}/export",
        name="export_customer",
        operation_id="exportCustomer",
        summary="Data-subject access report (scope: admin)",
        path_params=CustomerPath,
        status=200,
        response=CustomerExport,
        response_description="What the vault holds, and the partner instead",
        errors=(400, 401, 403, 405, 422, 429, 503),
    ),
    Operation(
        method="get",
        path="/v1/customers/{customer_ref}/erasure-preview",
        name="preview_erasure",
        operation_id="previewErasure",
        summary="What erasing a customer would remove, nothing done (scope: delete)",
        description="The vault's tokens by kind and what the partner holds: the partner"
        " customer, its attached payment methods by type, and its open subscriptions, which"
        " the erasure's deletion of the partner customer cancels at once.",
        path_params=CustomerPath,
        status=200,
        response=ErasurePreview,
        response_description="The preview",
        errors=(400, 401, 403, 405, 422, 429, 502, 503, 504),
    ),
    Operation(
        method="delete",
        path="/v1/customers/{customer_ref}",
        name="erase_customer",
        operation_id="eraseCustomer",
        summary="Erase a customer: detach at the partner, crypto-shred (scope: delete)",
        description="Idempotent: a repeat answers status already_erased; a customer_ref the"
        " vault holds nothing under is 404 customer_not_found; a record the vault cannot"
        " read is 503 record_unreadable, nothing deleted. 502 erasure_incomplete carries"
        " `deleted` and a `remaining` list (tokens and/or the partner customer the partner"
        " did not confirm); repeat the request to finish. Deleting the partner customer"
        " cancels its subscriptions at once (partner.subscriptions_cancelled); GET"
        " /v1/customers/{customer_ref}/erasure-preview shows them first.",
        path_params=CustomerPath,
        status=200,
        response=Erasure,
        response_description="Erased (or already erased)",
        errors=(400, 401, 403, 404, 405, 422, 429, 502, 503, 504),
    ),
    Operation(
        method="post",
        path="/v1/partners/stripe/events",
        name="stripe_events",
        operation_id="receiveStripeEvent",
        summary="Stripe webhook endpoint (no client key: the Stripe-Signature is checked)",
        description="Deliveries signed with a secret in TOKENPROXY_STRIPE_WEBHOOK_SECRET_FILE"
        " (timestamp tolerance 300 s) are applied once per event id: a redelivery answers"
        " 200 with replayed true. Unsigned, badly signed or stale deliveries are 400"
        " invalid_signature; 503 webhooks_not_configured without secrets. Types the proxy"
        " does not act on are answered 200 with outcome ignored.",
        status=200,
        response=PartnerEventReceipt,
        response_description="Applied, or recognised",
        errors=(400, 405, 408, 413, 415, 503),
        public=True,
        # Stripe delivers from the internet, through the ingress like a shopper's browser.
        public_listener=True,
    ),
    Operation(
        method="get",
        path="/openapi.json",
        name="openapi",
        operation_id="openapi",
        summary="This document",
        status=200,
        response=None,
        response_description="OpenAPI document",
        errors=(400, 405),
        public=True,
        public_listener=True,
    ),
    Operation(
        method="get",
        path="/elements/card",
        name="elements_card",
        operation_id="elementsCard",
        summary="Hosted card fields page for an iframe (frame-ancestors: CORS origins)",
        status=200,
        response=None,
        response_description="HTML",
        errors=(400, 404, 405),
        public=True,
        media_type="text/html",
        public_listener=True,
    ),
    Operation(
        method="get",
        path=r"/elements/{asset:card\.js|card\.css|tokenproxy\.js}",
        name="elements_asset",
        operation_id="elementsAsset",
        summary="tokenproxy.js for checkout pages; card.js and card.css for the frame",
        path_params=AssetPath,
        status=200,
        response=None,
        response_description="Script or style sheet",
        errors=(400, 404, 405),
        public=True,
        media_type=None,
        public_listener=True,
    ),
)


def _query_parameters() -> dict[str, frozenset[str]]:
    taken: dict[str, frozenset[str]] = {}
    for op in OPERATIONS:
        if op.query is not None:
            taken[op.template] = taken.get(op.template, frozenset()) | set(field_names(op.query))
    return taken


# The query parameters each route template takes (any other is refused by the middleware).
QUERY_PARAMETERS: Final[dict[str, frozenset[str]]] = _query_parameters()


# The route templates the public listener serves when an internal listener is configured.
PUBLIC_TEMPLATES: Final[frozenset[str]] = frozenset(
    op.template for op in OPERATIONS if op.public_listener
)


def routed() -> tuple[Operation, ...]:
    """The operations a route answers (preflights are the CORS middleware's)."""
    return tuple(op for op in OPERATIONS if not op.preflight)


def describe(op: Operation) -> dict[str, Any]:
    """The parts of an operation's document entry that are not schemas (summary, ids)."""
    entry: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    if op.description:
        entry["description"] = op.description
    if op.public:
        entry["security"] = []
    return entry
