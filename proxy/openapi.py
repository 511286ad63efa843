"""The OpenAPI 3.1 document served at /openapi.json. Its examples hold no real card data."""

from __future__ import annotations

from typing import Any

from aiohttp import web

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error_responses(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": "Error",
            "content": {"application/json": {"schema": _ERROR}},
        }
        for s in statuses
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
                    "customer_ref": {"type": "string", "maxLength": 64},
                    "metadata": {
                        "type": "object",
                        "maxProperties": 20,
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
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/CardRequest"}}
                    },
                },
                "responses": {
                    "201": {
                        "description": "Tokenized",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CardToken"}
                            }
                        },
                    },
                    **_error_responses(400, 401, 402, 403, 413, 415, 422, 429, 502, 503, 504),
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
                    **_error_responses(401, 403, 404, 503),
                },
            }
        },
        "/elements/card": {
            "get": {
                "operationId": "elementsCard",
                "summary": "Hosted card fields page for an iframe (frame-ancestors: CORS origins)",
                "security": [],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
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
                "responses": {"200": {"description": "Script or style sheet"}},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI document"}},
            }
        },
    },
}


async def serve(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return web.json_response(DOCUMENT)
