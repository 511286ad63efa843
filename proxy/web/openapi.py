"""The OpenAPI 3.1 document served at /openapi.json. Its examples hold no real card data."""

from __future__ import annotations

from typing import Any

from aiohttp import web

_IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[!-~]([ -~]*[!-~])?$",
    },
}

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error_responses(*statuses: int) -> dict[str, Any]:
    # Every authenticated route may answer 429 auth_throttled (proxy.web.authguard).
    codes = sorted({*statuses, 429}) if 401 in statuses else statuses
    return {
        str(s): {
            "description": "Error",
            "content": {"application/json": {"schema": _ERROR}},
        }
        for s in codes
    }


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _body(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_CUSTOMER_REF = {
    "name": "customer_ref",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,64}$"},
}
_TOKEN = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}

# Customers, bank accounts, invoices, erasure: kept apart from DOCUMENT's literal so
# the card path's part stays readable.
_LIFECYCLE_SCHEMAS: dict[str, Any] = {
    "BankAccountRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["iban", "holder_name"],
        "properties": {
            "iban": {"type": "string", "description": "ISO 13616 IBAN; spaces allowed"},
            "holder_name": {"type": "string", "maxLength": 100},
            "email": {"type": "string", "maxLength": 254},
            "customer_ref": {"type": "string", "maxLength": 64},
            "mandate_acceptance": {"$ref": "#/components/schemas/MandateAcceptance"},
        },
    },
    "MandateAcceptance": {
        "type": "object",
        "additionalProperties": False,
        "required": ["ip_address", "user_agent"],
        "description": (
            "How the shopper accepted the SEPA Direct Debit mandate online; required with"
            " customer_ref. The proxy creates the mandate at the partner from it and keeps"
            " it in the audit trail (event mandate.accept), not in the token's record."
        ),
        "properties": {
            "ip_address": {"type": "string", "description": "the shopper's IPv4/IPv6 address"},
            "user_agent": {"type": "string", "maxLength": 512},
            "accepted_at": {
                "type": "integer",
                "description": "Unix seconds of acceptance (default: now); within the last day",
            },
        },
    },
    "CardConfirmRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["setup"],
        "properties": {
            "setup": {
                "type": "string",
                "maxLength": 8192,
                "description": "error.setup of the 402 authentication_required answer",
            }
        },
    },
    "BankToken": {
        "type": "object",
        "required": ["token", "kind", "country", "last4", "masked", "created_at"],
        "properties": {
            "token": {"type": "string", "pattern": "^vtok_bank_"},
            "kind": {"const": "bank"},
            "country": {"type": "string"},
            "bank_code": {"type": ["string", "null"]},
            "last4": {"type": "string"},
            "masked": {"type": "string", "description": "country + check digits + **** + last4"},
            "mandate_reference": {"type": ["string", "null"]},
            "customer_ref": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "InvoiceRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["customer_ref", "invoice_number", "amount", "currency", "due_date"],
        "properties": {
            "customer_ref": {"type": "string", "maxLength": 64},
            "invoice_number": {"type": "string", "maxLength": 64},
            "ocr_reference": {
                "type": "string",
                "description": "Swedish OCR, mod-10 check; one a card brand could have issued"
                " is refused (ocr_reference_card_like)",
            },
            "ocr_length_digit": {"type": "boolean", "default": False},
            "amount": {"type": "integer", "minimum": 0, "description": "minor units"},
            "currency": {"type": "string", "description": "ISO 4217, e.g. SEK"},
            "due_date": {"type": "string", "format": "date"},
            "partner": {"type": "string"},
            "partner_reference": {"type": "string", "maxLength": 255},
        },
    },
    "InvoiceToken": {
        "type": "object",
        "required": ["token", "kind", "invoice_number", "amount", "currency", "due_date"],
        "properties": {
            "token": {"type": "string", "pattern": "^vtok_inv_"},
            "kind": {"const": "invoice"},
            "invoice_number": {"type": "string"},
            "ocr_reference": {"type": ["string", "null"]},
            "amount": {"type": "integer"},
            "currency": {"type": "string"},
            "due_date": {"type": "string", "format": "date"},
            "customer_ref": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "TokenList": {
        "type": "object",
        "required": ["object", "customer_ref", "data", "has_more", "next_cursor"],
        "properties": {
            "object": {"const": "list"},
            "customer_ref": {"type": "string"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/TokenView"}},
            "has_more": {"type": "boolean"},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "pass as starting_after for the next page",
            },
        },
    },
    "CustomerExport": {
        "type": "object",
        "required": ["object", "customer_ref", "generated_at", "counts", "records"],
        "properties": {
            "object": {"const": "customer_export"},
            "customer_ref": {"type": "string"},
            "generated_at": {"type": "string", "format": "date-time"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "records": {"type": "array", "items": {"type": "object"}},
            "partner_customer": {"type": ["object", "null"]},
            "held_by_partner": {
                "type": "array",
                "items": {"type": "object"},
                "description": "which partner holds what (e.g. 'stripe: payment method for"
                " visa card …4242'); never the partner's ids, which only an audited resolve"
                " hands out",
            },
            "never_stored": {"type": "string"},
        },
    },
    "Erasure": {
        "type": "object",
        "required": ["status", "deleted", "partner", "key_shredded", "remaining"],
        "properties": {
            "object": {"const": "customer_erasure"},
            "status": {"enum": ["erased", "already_erased"]},
            "customer_ref": {"type": "string"},
            "deleted": {"type": "object", "additionalProperties": {"type": "integer"}},
            "partner": {"type": "object"},
            "idempotency_keys_deleted": {"type": "integer"},
            "key_shredded": {"type": "boolean"},
            "remaining": {"type": "array", "maxItems": 0},
        },
    },
    "TokenDeletion": {
        "type": "object",
        "required": ["object", "token", "kind", "deleted", "partner_detached"],
        "properties": {
            "object": {"const": "token_deletion"},
            "token": {"type": "string"},
            "kind": {"type": "string"},
            "deleted": {"const": True},
            "partner_detached": {"type": "boolean"},
        },
    },
}

_LIFECYCLE_PATHS: dict[str, Any] = {
    "/v1/bank-accounts": {
        "post": {
            "operationId": "createBankAccount",
            "summary": "Tokenize an IBAN as a SEPA debit payment method (scope: tokenize)",
            "description": "Idempotency-Key: as on POST /v1/cards.",
            "parameters": [_IDEMPOTENCY_KEY],
            "requestBody": _body("BankAccountRequest"),
            "responses": {
                "201": _json("BankToken", "Tokenized (or the replay of a stored answer)"),
                **_error_responses(
                    400, 401, 402, 403, 408, 409, 410, 413, 415, 422, 429, 502, 503, 504
                ),
            },
        },
        "options": {
            "operationId": "createBankAccountPreflight",
            "summary": "CORS preflight (origins from TOKENPROXY_CORS_ORIGINS)",
            "security": [],
            "responses": {"204": {"description": "Allowed"}, **_error_responses(403)},
        },
    },
    "/v1/invoices": {
        "post": {
            "operationId": "createInvoice",
            "summary": "Store an invoice reference (scope: invoice)",
            "description": "Idempotency-Key: as on POST /v1/cards.",
            "parameters": [_IDEMPOTENCY_KEY],
            "requestBody": _body("InvoiceRequest"),
            "responses": {
                "201": _json("InvoiceToken", "Stored (or the replay of a stored answer)"),
                **_error_responses(400, 401, 403, 408, 409, 410, 413, 415, 422, 503),
            },
        }
    },
    "/v1/customers/{customer_ref}/tokens": {
        "get": {
            "operationId": "listCustomerTokens",
            "summary": "A customer's tokens, masked, oldest first (scope: read)",
            "parameters": [
                _CUSTOMER_REF,
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                },
                {"name": "starting_after", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json("TokenList", "One page"),
                **_error_responses(400, 401, 403, 422, 503),
            },
        }
    },
    "/v1/customers/{customer_ref}/export": {
        "get": {
            "operationId": "exportCustomer",
            "summary": "Data-subject access report (scope: admin)",
            "parameters": [_CUSTOMER_REF],
            "responses": {
                "200": _json("CustomerExport", "What the vault holds, and the partner instead"),
                **_error_responses(401, 403, 422, 503),
            },
        }
    },
    "/v1/customers/{customer_ref}": {
        "delete": {
            "operationId": "eraseCustomer",
            "summary": "Erase a customer: detach at the partner, crypto-shred (scope: delete)",
            "description": "Idempotent: a repeat answers status already_erased; a "
            "customer_ref the vault holds nothing under is 404 customer_not_found; a "
            "record the vault cannot read is 503 record_unreadable, nothing deleted. "
            "502 erasure_incomplete carries `deleted` and a `remaining` list (tokens "
            "and/or the partner customer the partner did not confirm); repeat the "
            "request to finish.",
            "parameters": [_CUSTOMER_REF],
            "responses": {
                "200": _json("Erasure", "Erased (or already erased)"),
                **_error_responses(401, 403, 404, 422, 502, 503),
            },
        }
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "tokenproxy",
        "version": "1",
        "description": "Card data goes to the payment partner; callers get tokens.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["type", "code", "message", "param", "request_id"],
                        "properties": {
                            "type": {"type": "string"},
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "request_id": {"type": ["string", "null"]},
                            "setup": {
                                "type": "string",
                                "description": (
                                    "authentication_required only: opaque, for"
                                    " POST /v1/cards/confirm (valid for an hour)"
                                ),
                            },
                            "next_action": {
                                "type": ["object", "null"],
                                "description": (
                                    "authentication_required only: the partner's next"
                                    " action, e.g. {type: redirect_to_url, redirect_to_url:"
                                    " {url, return_url}}; send the shopper to url"
                                ),
                            },
                        },
                    }
                },
            },
            "CardRequest": {
                "type": "object",
                "additionalProperties": False,
                "required": ["number", "exp_month", "exp_year", "cvc"],
                "properties": {
                    "number": {"type": "string", "description": "12-19 digits; spaces/dashes ok"},
                    "exp_month": {"type": ["integer", "string"]},
                    "exp_year": {"type": ["integer", "string"]},
                    "cvc": {"type": "string"},
                    "holder_name": {"type": "string", "maxLength": 100},
                    "customer_ref": {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,64}$"},
                    "metadata": {
                        "type": "object",
                        "maxProperties": 20,
                        "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,40}$"},
                        "additionalProperties": {"type": "string", "maxLength": 500},
                    },
                    "return_url": {
                        "type": "string",
                        "maxLength": 2048,
                        "description": (
                            "with customer_ref: where the partner sends the shopper back"
                            " after authenticating the card (3-D Secure)"
                        ),
                    },
                },
            },
            "CardToken": {
                "type": "object",
                "required": ["token", "kind", "brand", "last4", "masked", "created_at"],
                "properties": {
                    "token": {"type": "string", "pattern": "^vtok_card_"},
                    "kind": {"const": "card"},
                    "brand": {"type": "string"},
                    "last4": {"type": "string"},
                    "masked": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                },
            },
            "TokenView": {
                "type": "object",
                "required": ["token", "kind", "created_at"],
                "properties": {
                    "token": {"type": "string"},
                    "kind": {"type": "string", "enum": ["card", "bank", "invoice"]},
                    "brand": {"type": "string"},
                    "last4": {"type": "string"},
                    "masked": {"type": "string"},
                    "customer_ref": {"type": ["string", "null"]},
                    "metadata": {"type": "object"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "partner": {"type": ["string", "null"], "description": "resolve scope only"},
                    "partner_reference": {
                        "type": ["string", "null"],
                        "description": "resolve scope only: the payment method (pm_…)",
                    },
                    "partner_customer": {
                        "type": "string",
                        "description": (
                            "resolve scope only: the partner customer (cus_…) the payment"
                            " method is saved on; absent when it is saved on none. Name it"
                            " as customer on an off-session PaymentIntent."
                        ),
                    },
                    "mandate_reference": {
                        "type": ["string", "null"],
                        "description": (
                            "resolve scope only, bank tokens: the SEPA mandate (mandate_…)"
                            " for an off-session debit; null when none was made"
                        ),
                    },
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/cards": {
            "post": {
                "operationId": "createCard",
                "summary": "Tokenize a card (scope: tokenize)",
                "description": (
                    "With an Idempotency-Key the final answer (201, or a client error such"
                    " as a 402 decline at creation or while saving) is stored and replayed"
                    " for the same key and body, byte for byte, marked Idempotent-Replayed:"
                    " true; another body is 422 idempotency_key_reused, a key still in"
                    " flight 409 idempotency_key_in_use, a key whose customer was erased"
                    " 410 idempotency_key_erased. Keys are scoped per client and expire"
                    " after 24 h. With customer_ref the card is saved on the customer for"
                    " off-session charges; when its issuer wants the cardholder to"
                    " authenticate the answer is 402 authentication_required with"
                    " error.next_action and error.setup, and no token: send the shopper"
                    " through next_action, then POST /v1/cards/confirm."
                ),
                "parameters": [_IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/CardRequest"}}
                    },
                },
                "responses": {
                    "201": {
                        "description": "Tokenized (or the replay of a stored answer)",
                        "headers": {
                            "Idempotent-Replayed": {
                                "schema": {"type": "string", "enum": ["true"]},
                                "description": "Present when this is a stored answer replayed",
                            }
                        },
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CardToken"}
                            }
                        },
                    },
                    **_error_responses(
                        400, 401, 402, 403, 405, 408, 409, 410, 413, 415, 422, 429, 502, 503, 504
                    ),
                },
            },
            "options": {
                "operationId": "createCardPreflight",
                "summary": "CORS preflight (origins from TOKENPROXY_CORS_ORIGINS)",
                "security": [],
                "responses": {"204": {"description": "Allowed"}, **_error_responses(403)},
            },
        },
        "/v1/cards/confirm": {
            "post": {
                "operationId": "confirmCard",
                "summary": "Token of a card whose holder completed authentication (tokenize)",
                "description": (
                    "Send error.setup from a 402 authentication_required answer once the"
                    " shopper is back from next_action. The proxy asks the partner: 201 with"
                    " the card token when the setup succeeded; 402 authentication_required"
                    " again while it has not; 402 setup_failed when it failed; 400"
                    " invalid_setup/setup_expired; 409 customer_changed when the customer"
                    " was erased meanwhile. Idempotency-Key: as on POST /v1/cards."
                ),
                "parameters": [_IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/CardConfirmRequest"}
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "The card's token",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CardToken"}
                            }
                        },
                    },
                    **_error_responses(
                        400, 401, 402, 403, 405, 408, 409, 413, 415, 422, 429, 502, 503, 504
                    ),
                },
            }
        },
        "/v1/tokens/{token}": {
            "get": {
                "operationId": "getToken",
                "summary": "Read a token (scope: read for the masked view, resolve for more)",
                "parameters": [
                    {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "The token's view",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/TokenView"}
                            }
                        },
                    },
                    **_error_responses(400, 401, 403, 404, 405, 503),
                },
            }
        },
        "/elements/card": {
            "get": {
                "operationId": "elementsCard",
                "summary": "Hosted card fields page for an iframe (frame-ancestors: CORS origins)",
                "security": [],
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {}}},
                    **_error_responses(404, 405),
                },
            }
        },
        "/elements/{asset}": {
            "get": {
                "operationId": "elementsAsset",
                "summary": "tokenproxy.js for checkout pages; card.js and card.css for the frame",
                "security": [],
                "parameters": [
                    {
                        "name": "asset",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["tokenproxy.js", "card.js", "card.css"]},
                    }
                ],
                "responses": {
                    "200": {"description": "Script or style sheet"},
                    **_error_responses(404, 405),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_error_responses(400, 405),
                },
            }
        },
    },
}

DOCUMENT["components"]["schemas"].update(_LIFECYCLE_SCHEMAS)
DOCUMENT["paths"].update(_LIFECYCLE_PATHS)
DOCUMENT["paths"]["/v1/tokens/{token}"]["delete"] = {
    "operationId": "deleteToken",
    "summary": "Delete one token, detaching it at the partner first (scope: delete)",
    "parameters": [_TOKEN],
    "responses": {
        "200": _json("TokenDeletion", "Deleted"),
        **_error_responses(401, 403, 404, 502, 503, 504),
    },
}


async def serve(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return web.json_response(DOCUMENT)
