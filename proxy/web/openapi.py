"""The OpenAPI 3.1 document served at /openapi.json, generated from the API's declarations.

Paths, methods and statuses come from :data:`proxy.web.api.OPERATIONS` (which the route
table is made from too); bodies and parameters from the Structs of
:mod:`proxy.domain.schemas`; the error codes from :data:`proxy.domain.errors.ERROR_CODES`.
It holds no examples, so it holds no card data.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from aiohttp import web

from proxy.domain.errors import JSON_CHARSET, JSON_CONTENT_TYPE
from proxy.domain.schemas import TOKEN_VIEWS, Error
from proxy.web.api import OPERATIONS, Operation, describe
from proxy.web.listeners import public_only

_REF: Final = "#/components/schemas/{name}"
# Request bodies are named for what they are in the document, not in the code.
_SUFFIX: Final = "Body"

_IDEMPOTENCY_KEY: Final[dict[str, Any]] = {
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
_REPLAYED: Final[dict[str, Any]] = {
    "Idempotent-Replayed": {
        "schema": {"type": "string", "enum": ["true"]},
        "description": "Present when this is a stored answer replayed",
    }
}


def _ref(struct: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": _REF.format(name=struct.__name__.removesuffix(_SUFFIX))}


def _renamed(value: Any, names: dict[str, str]) -> Any:
    """``value`` with every component reference and title spelled by its document name."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                prefix, _, name = item.rpartition("/")
                out[key] = f"{prefix}/{names.get(name, name)}"
            elif key != "title" or not isinstance(item, str):
                # msgspec titles each schema with its class name: the key already says it.
                out[key] = _renamed(item, names)
        return out
    if isinstance(value, list):
        return [_renamed(item, names) for item in value]
    return value


def _components(
    operations: tuple[Operation, ...],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The body schemas, and the properties of each parameter Struct by its name."""
    bodies: list[type[msgspec.Struct]] = [Error, *TOKEN_VIEWS]
    params: list[type[msgspec.Struct]] = []
    for op in operations:
        bodies += [s for s in (op.request,) if s is not None]
        if isinstance(op.response, tuple):
            bodies += op.response
        elif op.response is not None:
            bodies.append(op.response)
        params += [s for s in (op.path_params, op.query) if s is not None]
    _, schemas = msgspec.json.schema_components(
        list(dict.fromkeys(bodies + params)), ref_template=_REF
    )
    names = {name: name.removesuffix(_SUFFIX) for name in schemas}
    schemas = _renamed(schemas, names)
    parameters = {struct.__name__: schemas.pop(struct.__name__) for struct in set(params)}
    components = {names.get(name, name): schema for name, schema in schemas.items()}
    # msgspec describes no union of untagged Structs (and a tag would move `kind` first in
    # every answer): the views' union, and the listing made of them, are written here.
    components["TokenView"] = {
        "description": "A token's view: which one depends on its kind.",
        "anyOf": [_ref(view) for view in TOKEN_VIEWS],
    }
    if "TokenList" in components:
        components["TokenList"]["properties"]["data"]["items"] = {
            "$ref": _REF.format(name="TokenView")
        }
    return components, parameters


def _parameters(
    struct: type[msgspec.Struct] | None, where: str, schemas: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    if struct is None:
        return []
    schema = schemas[struct.__name__]
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": where, "required": where == "path" or name in required, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


def _success(op: Operation) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": op.response_description}
    if op.idempotent:
        answer["headers"] = _REPLAYED
    if isinstance(op.response, tuple):
        answer["content"] = {op.media_type: {"schema": {"$ref": _REF.format(name="TokenView")}}}
    elif op.response is not None:
        answer["content"] = {op.media_type: {"schema": _ref(op.response)}}
    elif op.media_type == "application/json":
        answer["content"] = {op.media_type: {"schema": {"type": "object"}}}
    elif op.media_type is not None:
        answer["content"] = {op.media_type: {}}
    return answer


def _operation(op: Operation, schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    entry = describe(op)
    parameters = _parameters(op.path_params, "path", schemas)
    parameters += _parameters(op.query, "query", schemas)
    if op.idempotent:
        parameters.append(_IDEMPOTENCY_KEY)
    if parameters:
        entry["parameters"] = parameters
    if op.request is not None:
        entry["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.request)}},
        }
    error = {"description": "Error", "content": {"application/json": {"schema": _ref(Error)}}}
    entry["responses"] = {
        str(op.status): _success(op),
        **{str(status): error for status in sorted(op.errors)},
    }
    return entry


def build(operations: tuple[Operation, ...] = OPERATIONS) -> dict[str, Any]:
    """The document of ``operations`` (by default the whole API)."""
    components, parameters = _components(operations)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.template, {})[op.method] = _operation(op, parameters)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tokenproxy",
            "version": "1",
            "description": "Card data goes to the payment partner; callers get tokens.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


DOCUMENT: Final[dict[str, Any]] = build()
# The public listener of a two-listener deployment describes only what it serves.
PUBLIC_DOCUMENT: Final[dict[str, Any]] = build(tuple(op for op in OPERATIONS if op.public_listener))
# Served as built once: the same bytes for every request.
_BODY: Final = msgspec.json.encode(DOCUMENT)
_PUBLIC_BODY: Final = msgspec.json.encode(PUBLIC_DOCUMENT)


async def serve(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    body = _PUBLIC_BODY if public_only(request) else _BODY
    return web.Response(body=body, content_type=JSON_CONTENT_TYPE, charset=JSON_CHARSET)
