"""Every request and response body of the API, each written once as a msgspec ``Struct``.

From these come the structural checks of request bodies (:mod:`proxy.domain.decode`), the
query parameters each route takes, and the schemas of the served OpenAPI document
(:mod:`proxy.web.openapi`). Constraints written here never ask more than the rules in
:mod:`proxy.domain` enforce (the document must not refuse what the server accepts); the
rules ask more: card numbers in free text, Luhn, IBAN checksums, OCR references.

A field whose wrong type or absence a rule reports with its own code (``exp_month`` as
``invalid_expiry_month``, an IBAN that is not a string as the IBAN's error) says so with
``RULE_TYPED`` or ``RULE_OWNED`` in its ``Meta.extra``; every other field's wrong type is
``invalid_type`` and its absence ``missing_field``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from proxy.domain.errors import ERROR_CODES

# The rule reports a wrong JSON type (the envelope still reports absence as missing_field).
RULE_TYPED: Final = "type"
# The rule reports absence, null and a wrong type alike.
RULE_OWNED: Final = "all"

# ----------------------------------------------------------------- shared values

# Anchored for JSON Schema (ECMA patterns search); the rules match them whole.
CUSTOMER_REF_PATTERN: Final = r"^[A-Za-z0-9_.:@-]{1,64}$"
METADATA_KEY_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,40}$"
METADATA_MAX_KEYS: Final = 20
METADATA_MAX_VALUE: Final = 500
HOLDER_NAME_MAX: Final = 100
# Postal codes run to 10 characters (a US ZIP+4 with its dash, Iran's 10 digits); 12 leaves
# room for a space or two, and no card number fits in it.
POSTAL_CODE_PATTERN: Final = r"^[A-Za-z0-9](?:[A-Za-z0-9 -]{0,10}[A-Za-z0-9])?$"
POSTAL_CODE_MAX_DIGITS: Final = 10
EMAIL_MAX: Final = 254
RETURN_URL_MAX: Final = 2048
USER_AGENT_MAX: Final = 512
SETUP_MAX: Final = 8192
INVOICE_NUMBER_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_./#-]{0,63}$"
PARTNER_REFERENCE_PATTERN: Final = r"^[A-Za-z0-9_]{1,255}$"
MAX_AMOUNT: Final = 10**15  # minor units; far above any invoice, far below float trouble
PAGE_DEFAULT: Final = 20
PAGE_MAX: Final = 100

CustomerRef = Annotated[
    str,
    Meta(
        pattern=CUSTOMER_REF_PATTERN,
        description="the caller's customer reference; never a card or account number",
    ),
]
Metadata = Annotated[
    dict[
        Annotated[str, Meta(pattern=METADATA_KEY_PATTERN)],
        Annotated[str, Meta(max_length=METADATA_MAX_VALUE)],
    ],
    Meta(
        max_length=METADATA_MAX_KEYS,
        description="flat string pairs shown to read clients: no card or bank data, and no"
        " key named like a card field",
    ),
]
Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
IsoDate = Annotated[str, Meta(extra_json_schema={"format": "date"})]


def _rule(kind: str, **meta: Any) -> Meta:
    return Meta(extra={"rule": kind}, **meta)


class _Hazmat(Struct):
    """A body that holds card or bank data: its text forms show field names only."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self.__struct_fields__)} fields, redacted>)"

    def __rich_repr__(self) -> Any:
        # rich (and so structlog's pretty tracebacks) would list every field's value.
        return iter(())

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} holds card data and cannot be pickled")


# --------------------------------------------------------------------- requests


class CardRequestBody(_Hazmat, forbid_unknown_fields=True, kw_only=True):
    """A card to tokenize: it goes to the payment partner and is never stored."""

    number: Annotated[str, Meta(description="12-19 digits; spaces/dashes ok")]
    exp_month: Annotated[int | str, _rule(RULE_TYPED, description="1-12")]
    exp_year: Annotated[int | str, _rule(RULE_TYPED, description="two or four digits")]
    cvc: Annotated[str, Meta(description="3 digits, 4 for amex")]
    holder_name: Annotated[str, Meta(max_length=HOLDER_NAME_MAX)] | None = None
    postal_code: (
        Annotated[
            str,
            Meta(
                pattern=POSTAL_CODE_PATTERN,
                description="the billing postal code, for the issuer's address check; 1-12"
                " letters, digits, spaces and dashes, at most 10 digits; sent to the payment"
                " partner only, never stored",
            ),
        ]
        | None
    ) = None
    customer_ref: CustomerRef | None = None
    metadata: Metadata | None = None
    return_url: (
        Annotated[
            str,
            Meta(
                max_length=RETURN_URL_MAX,
                description="with customer_ref: where the partner sends the shopper back"
                " after authenticating the card (3-D Secure)",
            ),
        ]
        | None
    ) = None


class CardConfirmRequestBody(Struct, forbid_unknown_fields=True, kw_only=True):
    """The setup of a card save that waited for its holder to authenticate."""

    setup: Annotated[
        str,
        _rule(
            RULE_TYPED,
            min_length=1,
            max_length=SETUP_MAX,
            description="error.setup of the 402 authentication_required answer",
        ),
    ]


class MandateAcceptanceBody(Struct, forbid_unknown_fields=True, kw_only=True):
    """How the shopper accepted the SEPA Direct Debit mandate online; required with
    customer_ref. The proxy creates the mandate at the partner from it and keeps it in
    the audit trail (event mandate.accept), not in the token's record."""

    ip_address: Annotated[str, _rule(RULE_OWNED, description="the shopper's IPv4/IPv6 address")]
    user_agent: Annotated[str, _rule(RULE_OWNED, min_length=1, max_length=USER_AGENT_MAX)]
    accepted_at: (
        Annotated[
            int,
            _rule(
                RULE_OWNED,
                description="Unix seconds of acceptance (default: now); within the last day",
            ),
        ]
        | UnsetType
    ) = UNSET


class BankAccountRequestBody(_Hazmat, forbid_unknown_fields=True, kw_only=True):
    """An IBAN to tokenize as a SEPA debit payment method."""

    iban: Annotated[str, _rule(RULE_TYPED, description="ISO 13616 IBAN; spaces allowed")]
    holder_name: Annotated[str, Meta(max_length=HOLDER_NAME_MAX)]
    email: Annotated[str, Meta(max_length=EMAIL_MAX)] | None = None
    customer_ref: CustomerRef | None = None
    # Its shape is checked by the mandate rules, after customer_ref (which it needs).
    mandate_acceptance: Annotated[MandateAcceptanceBody, _rule(RULE_TYPED)] | None = None


class InvoiceRequestBody(Struct, forbid_unknown_fields=True, kw_only=True):
    """An invoice reference to store under a token."""

    customer_ref: CustomerRef
    invoice_number: Annotated[str, Meta(pattern=INVOICE_NUMBER_PATTERN)]
    ocr_reference: (
        Annotated[
            str,
            _rule(
                RULE_TYPED,
                description="Swedish OCR, mod-10 check; one a card brand could have issued"
                " is refused (ocr_reference_card_like)",
            ),
        ]
        | None
    ) = None
    ocr_length_digit: bool = False
    amount: Annotated[
        int,
        Meta(
            ge=0,
            le=MAX_AMOUNT,
            description="minor units",
            extra={"type_message": "amount must be an integer in minor units."},
        ),
    ]
    currency: Annotated[str, Meta(description="ISO 4217, e.g. SEK")]
    due_date: IsoDate
    partner: Annotated[str, _rule(RULE_TYPED)] | None = None
    partner_reference: (
        Annotated[str, _rule(RULE_TYPED, pattern=PARTNER_REFERENCE_PATTERN)] | None
    ) = None


class TokenAttachRequestBody(Struct, forbid_unknown_fields=True, kw_only=True):
    """The customer to save a single-use card token on, so it can be charged again."""

    customer_ref: CustomerRef


# ------------------------------------------------------- path and query parameters


class CustomerPath(Struct, kw_only=True):
    """A route under one customer."""

    customer_ref: CustomerRef


class TokenPath(Struct, kw_only=True):
    """A route under one token."""

    token: str


class AssetPath(Struct, kw_only=True):
    """One of the hosted card fields' static files."""

    asset: Literal["tokenproxy.js", "card.js", "card.css"]


class TokenListQuery(Struct, kw_only=True):
    """The page of a customer's tokens to list."""

    limit: Annotated[int, Meta(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT
    starting_after: (
        Annotated[str, Meta(description="next_cursor of the page before")] | UnsetType
    ) = UNSET


# -------------------------------------------------------------------- responses

# What reading a token adds to its created form. UNSET fields are left out of the answer:
# listing fields outside listings, partner references for any client without `resolve`.
LastUsed = Annotated[Timestamp | None, Meta(description="listings only")] | UnsetType
Partner = Annotated[str | None, Meta(description="resolve scope only")] | UnsetType
PartnerReference = (
    Annotated[str | None, Meta(description="resolve scope only: the payment method (pm_…)")]
    | UnsetType
)
PartnerCustomer = (
    Annotated[
        str,
        Meta(
            description="resolve scope only: the partner customer (cus_…) the payment method"
            " is saved on; absent when it is saved on none. Name it as customer on an"
            " off-session PaymentIntent."
        ),
    ]
    | UnsetType
)


# A record's details, as kept when it was stored; one the record lacks is left out.
Detail = str | UnsetType
NullableDetail = str | None | UnsetType
# Cards and bank accounts alike: a payment method saved on no customer is single-use.
Reusable = (
    Annotated[
        bool,
        Meta(
            description="false: the partner lets the payment method be used for one"
            " payment only (it is saved on no customer); POST /v1/tokens/{token}/attach"
            " saves it on one"
        ),
    ]
    | UnsetType
)


class CardToken(Struct, kw_only=True):
    """A card's token, as created."""

    token: Annotated[str, Meta(pattern="^vtok_card_")]
    kind: Literal["card"]
    brand: (
        Annotated[
            str,
            Meta(
                description="the partner's brand (Stripe: visa, mastercard,"
                " amex, cartes_bancaires, ...)"
            ),
        ]
        | UnsetType
    ) = UNSET
    display_brand: (
        Annotated[str, Meta(description="the partner's brand to show (co-badged cards)")]
        | UnsetType
    ) = UNSET
    funding: (
        Annotated[str, Meta(description="credit, debit, prepaid or unknown, as the partner says")]
        | UnsetType
    ) = UNSET
    country: (
        Annotated[str, Meta(description="the issuing country (ISO 3166-1 alpha-2)")] | UnsetType
    ) = UNSET
    last4: Detail = UNSET
    masked: (
        Annotated[str, Meta(description="first six and last four, the rest starred")] | UnsetType
    ) = UNSET
    reusable: Reusable = UNSET
    created_at: Timestamp


class BankToken(Struct, kw_only=True):
    """A bank account's token, as created."""

    token: Annotated[str, Meta(pattern="^vtok_bank_")]
    kind: Literal["bank"]
    country: Detail = UNSET
    bank_code: NullableDetail = UNSET
    last4: Detail = UNSET
    masked: (
        Annotated[str, Meta(description="country + check digits + **** + last4")] | UnsetType
    ) = UNSET
    reusable: Reusable = UNSET
    customer_ref: str | None
    created_at: Timestamp


class InvoiceToken(Struct, kw_only=True):
    """An invoice reference's token, as created."""

    token: Annotated[str, Meta(pattern="^vtok_inv_")]
    kind: Literal["invoice"]
    invoice_number: Detail = UNSET
    ocr_reference: NullableDetail = UNSET
    amount: int | UnsetType = UNSET
    currency: Detail = UNSET
    due_date: IsoDate | UnsetType = UNSET
    customer_ref: str | None
    created_at: Timestamp


# Set once the partner reports the payment method detached (or its customer deleted).
DetachedAt = (
    Annotated[
        str,
        Meta(
            description="when the partner reported the payment method detached; resolve"
            " then answers 410 token_detached"
        ),
    ]
    | UnsetType
)


class CardView(CardToken, kw_only=True):
    """A card token read back: masked for `read`, with partner references for `resolve`."""

    customer_ref: str | None
    metadata: dict[str, str]
    # Kept since partner sync: the expiry alone is not card data, and billing acts on it.
    exp_month: Annotated[int, Meta(ge=1, le=12)] | UnsetType = UNSET
    exp_year: Annotated[int, Meta(ge=2000)] | UnsetType = UNSET
    detached_at: DetachedAt = UNSET
    last_used_at: LastUsed = UNSET
    partner_customer: PartnerCustomer = UNSET
    partner: Partner = UNSET
    partner_reference: PartnerReference = UNSET


class BankView(BankToken, kw_only=True):
    """A bank account token read back."""

    metadata: dict[str, str]
    detached_at: DetachedAt = UNSET
    mandate_status: (
        Annotated[
            str,
            Meta(
                description="inactive once the partner reports the SEPA mandate revoked;"
                " resolve then answers 410 mandate_revoked"
            ),
        ]
        | UnsetType
    ) = UNSET
    last_used_at: LastUsed = UNSET
    mandate_reference: (
        Annotated[
            str | None,
            Meta(
                description="resolve scope only: the SEPA mandate (mandate_…) for an"
                " off-session debit; null when none was made"
            ),
        ]
        | UnsetType
    ) = UNSET
    partner_customer: PartnerCustomer = UNSET
    partner: Partner = UNSET
    partner_reference: PartnerReference = UNSET


class InvoiceView(InvoiceToken, kw_only=True):
    """An invoice token read back."""

    metadata: dict[str, str]
    last_used_at: LastUsed = UNSET
    partner: Partner = UNSET
    partner_reference: PartnerReference = UNSET


# GET /v1/tokens/{token} answers one of these (the document says anyOf).
TOKEN_VIEWS: Final = (CardView, BankView, InvoiceView)
TokenView = CardView | BankView | InvoiceView


class TokenList(Struct, kw_only=True):
    """One page of a customer's tokens, masked, oldest first."""

    object: Literal["list"]
    customer_ref: str
    data: Annotated[list[dict[str, Any]], Meta(description="TokenView items")]
    has_more: bool
    next_cursor: Annotated[str | None, Meta(description="pass as starting_after for the next page")]


class CustomerExport(Struct, kw_only=True):
    """The data-subject access report: what the vault holds, and what the partner holds."""

    object: Literal["customer_export"]
    customer_ref: str
    generated_at: Timestamp
    counts: dict[str, int]
    records: list[dict[str, Any]]
    partner_customer: dict[str, Any] | None
    held_by_partner: Annotated[
        list[dict[str, Any]],
        Meta(
            description="which partner holds what (e.g. 'stripe: payment method for visa"
            " card …4242'); never the partner's ids, which only an audited resolve hands out"
        ),
    ]
    never_stored: str


class Erasure(Struct, kw_only=True):
    """What erasing a customer did."""

    object: Literal["customer_erasure"]
    status: Literal["erased", "already_erased"]
    customer_ref: str
    deleted: dict[str, int]
    partner: dict[str, Any]
    idempotency_keys_deleted: int
    key_shredded: bool
    remaining: Annotated[list[dict[str, Any]], Meta(max_length=0)]


class ErasurePreview(Struct, kw_only=True):
    """What erasing a customer would remove, at the vault and at the partner; nothing done."""

    object: Literal["customer_erasure_preview"]
    customer_ref: str
    tokens: Annotated[dict[str, int], Meta(description="the vault's tokens, by kind")]
    partner: Annotated[
        dict[str, Any],
        Meta(
            description="customer (whether a partner customer is mapped), payment_methods"
            " (attached, by type), subscriptions (open: deleting the customer cancels them"
            " at once)"
        ),
    ]


class TokenDeletion(Struct, kw_only=True):
    """What deleting one token did."""

    object: Literal["token_deletion"]
    token: str
    kind: str
    deleted: Literal[True]
    partner_detached: bool


class ErrorDetail(Struct, kw_only=True):
    """An error: a stable code, a message that never echoes input, and the field at fault."""

    type: str
    code: Annotated[str, Meta(extra_json_schema={"enum": sorted(ERROR_CODES)})]
    message: str
    param: str | None
    request_id: str | None
    setup: (
        Annotated[
            str,
            Meta(
                description="authentication_required only: opaque, for POST /v1/cards/confirm"
                " (valid for an hour)"
            ),
        ]
        | UnsetType
    ) = UNSET
    next_action: (
        Annotated[
            dict[str, Any] | None,
            Meta(
                description="authentication_required only: the partner's next action, e.g."
                " {type: redirect_to_url, redirect_to_url: {url, return_url}}; send the"
                " shopper to url"
            ),
        ]
        | UnsetType
    ) = UNSET


class Error(Struct, kw_only=True):
    """Every error answer's body."""

    error: ErrorDetail


class PartnerEventReceipt(Struct, kw_only=True):
    """The answer to a partner event: what became of it (the partner only reads the status)."""

    object: Literal["partner_event"]
    id: str
    type: str
    outcome: Annotated[
        str,
        Meta(
            description="applied, stale (older than the change already applied), unchanged,"
            " unknown_payment_method, or ignored (a type the proxy does not act on)"
        ),
    ]
    replayed: bool
