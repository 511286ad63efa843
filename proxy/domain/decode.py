"""Request bodies against their schema (:mod:`proxy.domain.schemas`), with our error codes.

``decode(body, Model)`` hands back a ``Model``. A well-formed body is converted by msgspec
in one call and the rules then read typed attributes. Anything else gets a stand-in that
checks each field as the rules read it, so a malformed body is answered with the error
the rules meet first, in their order: the envelope (``invalid_body``, ``unknown_field``,
``missing_field``) always, then each field's ``invalid_type`` at the moment a rule reads
it. msgspec's own message is never used, not even to pick the code: it can quote input.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Final, TypeVar, cast

import msgspec
from msgspec import NODEFAULT, inspect

from proxy.domain.errors import InvalidRequest, echoable
from proxy.domain.schemas import RULE_OWNED, RULE_TYPED

S = TypeVar("S", bound=msgspec.Struct)

# How a wrong type is named in an ``invalid_type`` message.
_NOUNS: Final[dict[type, str]] = {
    str: "a string",
    int: "an integer",
    bool: "a boolean",
    float: "a number",
    dict: "an object",
    list: "an array",
}
_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    required: bool
    default: Any
    rule: str | None  # RULE_TYPED, RULE_OWNED or None: who reports a wrong type
    accepts: tuple[type, ...]
    nullable: bool
    type_message: str


@dataclass(frozen=True, slots=True)
class _Shape:
    fields: dict[str, _Field]
    # Reported as missing_field by the envelope, in the model's order.
    required: tuple[str, ...]


def _accepted(info: inspect.Type) -> tuple[tuple[type, ...], bool, dict[str, Any]]:
    """The Python types a JSON value of ``info`` decodes to, whether null is one, the extras."""
    extra: dict[str, Any] = {}
    while isinstance(info, inspect.Metadata):
        extra |= info.extra or {}
        info = info.type
    if isinstance(info, inspect.UnionType):
        types: tuple[type, ...] = ()
        nullable = False
        for member in info.types:
            accepts, null, more = _accepted(member)
            types, nullable, extra = types + accepts, nullable or null, extra | more
        return types, nullable, extra
    if isinstance(info, inspect.NoneType):
        return (), True, extra
    if isinstance(info, inspect.StrType):
        return (str,), False, extra
    if isinstance(info, inspect.BoolType):
        return (bool,), False, extra
    if isinstance(info, inspect.IntType):
        return (int,), False, extra
    if isinstance(info, inspect.DictType | inspect.StructType):
        return (dict,), False, extra
    if isinstance(info, inspect.ListType):
        return (list,), False, extra
    raise TypeError(f"request schemas do not use {type(info).__name__}")


@cache
def _shape(model: type[msgspec.Struct]) -> _Shape:
    info = inspect.type_info(model)
    assert isinstance(info, inspect.StructType)  # noqa: S101 - a Struct's type info
    defaults = {f.name: f.default for f in msgspec.structs.fields(model)}
    fields: dict[str, _Field] = {}
    for field in info.fields:
        accepts, nullable, extra = _accepted(field.type)
        noun = next((_NOUNS[t] for t in accepts if t in _NOUNS), "valid")
        fields[field.name] = _Field(
            name=field.name,
            required=field.required,
            default=defaults[field.name],
            rule=extra.get("rule"),
            accepts=accepts,
            nullable=nullable,
            type_message=extra.get("type_message", f"{field.name} must be {noun}."),
        )
    required = tuple(f.name for f in fields.values() if f.required and f.rule != RULE_OWNED)
    return _Shape(fields=fields, required=required)


def field_names(model: type[msgspec.Struct]) -> tuple[str, ...]:
    """The fields ``model`` declares, in order (for query parameters and the document)."""
    return tuple(_shape(model).fields)


def decode(body: object, model: type[S], *, param: str | None = None) -> S:
    """``body`` as a ``model``, or the error the model's rules meet first.

    ``param`` names a nested object (``mandate_acceptance``): its errors name their field
    under it, and a value that is not an object is its ``invalid_type``.
    """
    if isinstance(body, model):
        return body
    try:
        return msgspec.convert(body, model)
    except msgspec.ValidationError:
        pass
    shape = _shape(model)
    _check_envelope(body, shape, param)
    assert isinstance(body, dict)  # noqa: S101 - _check_envelope refused anything else
    # Read as the model by the rules; each field is checked when they read it.
    return cast(S, _Checked(body, shape, param))


def _check_envelope(body: object, shape: _Shape, param: str | None) -> None:
    if not isinstance(body, dict):
        if param is None:
            raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
        raise InvalidRequest(f"{param} must be an object.", code="invalid_type", param=param)
    for key in body:
        if key not in shape.fields:
            name = echoable(key)
            where = name if param is None or name is None else f"{param}.{name}"
            raise InvalidRequest("Unknown field.", code="unknown_field", param=where or param)
    for name in shape.required:
        # A null counts as absent: "field": null is how many clients leave one out.
        if body.get(name) is None:
            where = name if param is None else f"{param}.{name}"
            raise InvalidRequest(f"{name} is required.", code="missing_field", param=where)


class _Checked:
    """A body that failed msgspec's conversion, read field by field as its model.

    Absent fields read as the model's default (None when it has none: only a field whose
    rule reports absence itself can be absent then).
    """

    __slots__ = ("_body", "_param", "_shape")

    def __init__(self, body: dict[str, Any], shape: _Shape, param: str | None) -> None:
        self._body = body
        self._shape = shape
        self._param = param

    def __getattr__(self, name: str) -> Any:
        field = self._shape.fields[name]
        value = self._body.get(name, _MISSING)
        if value is _MISSING:
            return None if field.default is NODEFAULT else field.default
        if field.rule in (RULE_TYPED, RULE_OWNED):
            return value
        if value is None and field.nullable:
            return None
        # bool is an int in Python; JSON true is no number.
        if not isinstance(value, field.accepts) or (
            isinstance(value, bool) and bool not in field.accepts
        ):
            param = name if self._param is None else f"{self._param}.{name}"
            raise InvalidRequest(field.type_message, code="invalid_type", param=param)
        return value

    def __repr__(self) -> str:
        # The body may hold card data: never show it.
        return f"<unchecked {sorted(self._shape.fields)!r}>"
