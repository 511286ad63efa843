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
    return {
        str(s): {
            "description": "Error",
            "content": {"application/json": {"schema": _ERROR}},
        }
        for s in statuses
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
            "held_by_partner": {"type": "array", "items": {"type": "object"}},
            "never_stored": {"type": "string"},
        },
    },
    "Erasure": {
        "type": "object",
        "required": ["status", "deleted", "partner", "key_shredded", "remaining"],
        "properties": {
            "object": {"const": "customer_erasure"},
            "status": {"const": "erased"},
            "customer_ref": {"type": "string"},
            "deleted": {"type": "object", "additionalProperties": {"type": "integer"}},
            "partner": {"type": "object"},
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
                **_error_responses(400, 401, 402, 403, 408, 409, 413, 415, 422, 429, 502, 503, 504),
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
                **_error_responses(400, 401, 403, 408, 409, 413, 415, 422, 503),
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
            "description": "Idempotent. 502 erasure_incomplete carries `deleted` and a "
            "`remaining` list (tokens and/or the partner customer the partner did not "
            "confirm); repeat the request to finish.",
            "parameters": [_CUSTOMER_REF],
            "responses": {
                "200": _json("Erasure", "Erased"),
                **_error_responses(401, 403, 422, 502, 503),
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
                        "description": "resolve scope only",
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
                    "With an Idempotency-Key the first answer (201 or 402) is stored and"
                    " replayed for the same key and body, marked Idempotent-Replayed: true;"
                    " another body is 422 idempotency_key_reused, a key still in flight"
                    " 409 idempotency_key_in_use. Keys are scoped per client and expire"
                    " after 24 h."
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
                        400, 401, 402, 403, 405, 408, 409, 413, 415, 422, 429, 502, 503, 504
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
