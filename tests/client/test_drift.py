"""The client's models and error handling held to the OpenAPI document the proxy serves.

Each ``from_json`` of the client runs on an answer made from the response schema of the
route it parses, an answer that notes every field read from it: a field the schema does
not declare, or one read as always present that the schema does not require, is drift.
Error bodies get the same treatment against the error responses' schema. The error types
and codes the client gives a meaning of its own must be ones the document lists, and every
error status the document lists must have its exception class in the client.

Only the document's structure is read (``paths`` → responses → ``content`` schemas,
``$ref`` into ``components``, ``anyOf``/``oneOf``/``allOf``), whether it is written by
hand or generated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import tokenproxy_client._models as models
from tests.conftest import RunningProxy
from tokenproxy_client import APIError
from tokenproxy_client._errors import KNOWN_CODES, KNOWN_TYPES, error_for

Schema = dict[str, Any]


@dataclass(frozen=True)
class Reader:
    """A client model's ``from_json`` and the route whose success answer it parses."""

    method: str
    path: str
    model: type
    read: Callable[[dict[str, Any]], object]

    def __str__(self) -> str:
        return f"{self.model.__name__} <- {self.method} {self.path}"


def _reader(method: str, path: str, model: type, *args: str) -> Reader:
    return Reader(method, path, model, functools.partial(model.from_json, *args))  # type: ignore[attr-defined]


READERS = [
    _reader("POST", "/v1/cards", models.CardToken),
    _reader("POST", "/v1/cards/confirm", models.CardToken),
    _reader("POST", "/v1/tokens/{token}/attach", models.CardToken),
    _reader("POST", "/v1/bank-accounts", models.BankAccountToken),
    _reader("POST", "/v1/invoices", models.InvoiceToken),
    _reader("GET", "/v1/tokens/{token}", models.TokenView),
    _reader("GET", "/v1/tokens/{token}", models.ResolvedToken),
    _reader("GET", "/v1/customers/{customer_ref}/tokens", models.TokenPage),
    _reader("GET", "/v1/customers/{customer_ref}/export", models.CustomerExport, "cus-1"),
    _reader("DELETE", "/v1/customers/{customer_ref}", models.CustomerErasure, "cus-1"),
    _reader("DELETE", "/v1/tokens/{token}", models.Deletion, "vtok_card_x"),
]


# ------------------------------------------------------------ the document


def resolve(spec: Schema, node: Schema) -> Schema:
    """``node`` with its local ``$ref`` chain followed."""
    seen: set[str] = set()
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"not a local reference: {ref}"
        assert ref not in seen, f"a $ref cycle at {ref}"
        seen.add(ref)
        target: Any = spec
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def variants(spec: Schema, schema: Schema) -> list[Schema]:
    """The alternatives a value of ``schema`` may take (``allOf`` merged), nulls left out."""
    schema = resolve(spec, schema)
    if "allOf" in schema:
        merged: Schema = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            for variant in variants(spec, part):
                merged.setdefault("properties", {}).update(variant.get("properties", {}))
                merged["required"] = [*merged.get("required", []), *variant.get("required", [])]
                for key, value in variant.items():
                    merged.setdefault(key, value)
        return [merged]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return [v for alt in schema[key] for v in variants(spec, alt)]
    if schema.get("type") == "null" or schema.get("const", ...) is None:
        return []
    return [schema]


def types_of(schema: Schema) -> list[str]:
    """The JSON types ``schema`` names (``type`` as a string or a list)."""
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def is_object(schema: Schema) -> bool:
    """True for an object schema."""
    return "object" in types_of(schema) or "properties" in schema


def success_schema(spec: Schema, reader: Reader) -> Schema:
    """The JSON schema of the 2xx answer(s) of the reader's route; fails naming what is missing."""
    operation = spec["paths"].get(reader.path, {}).get(reader.method.lower())
    assert operation is not None, f"the document has no {reader.method} {reader.path}"
    schemas = []
    for status, response in operation.get("responses", {}).items():
        if not status.startswith("2"):
            continue
        content = resolve(spec, response).get("content", {})
        if "application/json" in content and "schema" in content["application/json"]:
            schemas.append(content["application/json"]["schema"])
    assert schemas, (
        f"{reader.method} {reader.path} has no JSON response schema for its success answer,"
        f" which {reader.model.__name__}.from_json reads"
    )
    return {"anyOf": schemas} if len(schemas) > 1 else schemas[0]


def error_schemas(spec: Schema) -> Iterator[tuple[str, Schema]]:
    """Each (status, JSON schema) of every 4xx/5xx response in the document (ranges left out)."""
    for item in spec["paths"].values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                if not (status.isdigit() and status[0] in "45"):
                    continue
                content = resolve(spec, response).get("content", {})
                for media in content.values():
                    if "schema" in media:
                        yield status, media["schema"]


def listed_values(spec: Schema, prop: str) -> set[str]:
    """The values the document's error responses list for error bodies' field ``prop``.

    Read from ``enum``/``const`` of that property (at any depth of the error schemas) and
    from the responses' examples.
    """
    found: set[str] = set()
    seen: set[int] = set()

    def walk(schema: Schema) -> None:
        for variant in variants(spec, schema):
            if id(variant) in seen:
                continue
            seen.add(id(variant))
            for name, sub in variant.get("properties", {}).items():
                if name == prop:
                    for value in variants(spec, sub):
                        found.update(v for v in value.get("enum", []) if isinstance(v, str))
                        if isinstance(value.get("const"), str):
                            found.add(value["const"])
                walk(sub)
            if isinstance(variant.get("items"), dict):
                walk(variant["items"])

    for _, schema in error_schemas(spec):
        walk(schema)
    for item in spec["paths"].values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                for media in resolve(spec, response).get("content", {}).values():
                    examples = [media.get("example")]
                    examples += [e.get("value") for e in media.get("examples", {}).values()]
                    for example in examples:
                        error = example.get("error") if isinstance(example, dict) else None
                        if isinstance(error, dict) and isinstance(error.get(prop), str):
                            found.add(error[prop])
    return found


# ------------------------------------------------ an answer that notes its reads


class Answer(dict[str, Any]):
    """A JSON object made from a schema that notes each read the schema does not allow."""

    def __init__(
        self,
        values: dict[str, Any],
        *,
        where: str,
        declared: set[str] | None,
        required: set[str],
        problems: list[str],
    ) -> None:
        super().__init__(values)
        self.where = where
        self.declared = declared
        self.required = required
        self.problems = problems

    def _check(self, key: str, *, must_be_there: bool) -> None:
        if self.declared is not None and key not in self.declared:
            self.problems.append(f"{self.where}.{key}: read, but the schema does not declare it")
        elif must_be_there and key not in self.required:
            self.problems.append(
                f"{self.where}.{key}: read as always present, but the schema does not require it"
            )

    def __getitem__(self, key: str) -> Any:
        self._check(key, must_be_there=True)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._check(key, must_be_there=False)
        return super().get(key, default)


def sample(spec: Schema, schema: Schema, where: str, problems: list[str]) -> Any:
    """A value ``schema`` allows, every object in it an Answer; None when only null is."""
    options = variants(spec, schema)
    objects = [v for v in options if is_object(v)]
    if objects:
        # A union of objects: a field any of them declares may be read; only one every
        # one of them requires may be read as always present.
        declared: set[str] = set()
        required = set(objects[0].get("required", []))
        properties: dict[str, Schema] = {}
        free_form = False
        for variant in objects:
            if "properties" not in variant:
                free_form = True
            properties.update(variant.get("properties", {}))
            declared.update(variant.get("properties", {}))
            required &= set(variant.get("required", []))
        values = {
            name: sample(spec, sub, f"{where}.{name}", problems) for name, sub in properties.items()
        }
        return Answer(
            values,
            where=where,
            declared=None if free_form else declared,
            required=required,
            problems=problems,
        )
    if not options:
        return None
    schema = options[0]
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kinds = [k for k in types_of(schema) if k != "null"] or ["string"]
    kind = kinds[0]
    if kind == "array":
        items = schema.get("items")
        if schema.get("maxItems") == 0 or not isinstance(items, dict):
            return []
        return [sample(spec, items, f"{where}[]", problems)]
    if kind == "boolean":
        return True
    if kind in {"integer", "number"}:
        return schema.get("minimum", 1)
    return {"date-time": "2030-01-31T12:00:00+00:00", "date": "2030-01-31"}.get(
        schema.get("format", ""), "x"
    )


# ------------------------------------------------------------------ tests


@pytest.fixture
async def served_document(proxy: RunningProxy) -> Schema:
    """The OpenAPI document the running proxy serves at /openapi.json."""
    status, spec, _ = await proxy.request("GET", "/openapi.json")
    assert status == 200
    assert isinstance(spec, dict)
    return spec


def test_every_model_is_held_to_a_route() -> None:
    """Each client model that parses an answer has its route in READERS (none escapes)."""
    parsers = {
        cls
        for cls in vars(models).values()
        if isinstance(cls, type) and cls.__module__ == models.__name__ and "from_json" in vars(cls)
    }
    assert parsers == {r.model for r in READERS}


@pytest.mark.parametrize("reader", READERS, ids=str)
async def test_model_reads_only_what_the_schema_declares(
    served_document: Schema, reader: Reader
) -> None:
    """A model reads only fields its answer schema declares, and relies only on required ones."""
    problems: list[str] = []
    answer = sample(served_document, success_schema(served_document, reader), "answer", problems)
    assert isinstance(answer, Answer), f"{reader}: the success answer is not a JSON object"
    try:
        reader.read(answer)
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"{type(exc).__name__} on an answer the schema allows: {exc}")
    assert not problems, f"{reader}: " + "; ".join(problems)


async def test_error_bodies_are_read_as_the_schema_declares(served_document: Schema) -> None:
    """error_for reads only what each error response's schema declares, for every status listed."""
    problems: list[str] = []
    responses = list(error_schemas(served_document))
    assert responses, "the document lists no error responses"
    for status, schema in responses:
        body = sample(served_document, schema, f"{status} error", problems)
        error_for(int(status), body, {})
    assert not sorted(set(problems)), sorted(set(problems))


async def test_error_statuses_have_their_exception(served_document: Schema) -> None:
    """Each 4xx/5xx status the document lists maps to a class of its own, not the fallback."""
    statuses = {int(status) for status, _ in error_schemas(served_document)}
    unmapped = {
        status
        for status in statuses
        if status != 500 and type(error_for(status, None, {})) is APIError
    }
    assert not unmapped, f"statuses the client would report as APIError: {sorted(unmapped)}"


async def test_known_codes_and_types_are_listed(served_document: Schema) -> None:
    """The error codes and types the client acts on are ones the document lists."""
    codes = listed_values(served_document, "code")
    types = listed_values(served_document, "type")
    if not codes and not types:
        pytest.skip("the served document enumerates no error codes or types to compare with")
    if codes:
        assert codes >= KNOWN_CODES, f"not in the document: {sorted(KNOWN_CODES - codes)}"
    if types:
        assert types >= KNOWN_TYPES, f"not in the document: {sorted(KNOWN_TYPES - types)}"
