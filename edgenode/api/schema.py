"""How a route declares what it takes and answers: the models behind ``/openapi.json`` and body validation.

A route module declares each operation with ``@operation(...)`` on its endpoint::

    class CreateTenant(Body):
        name: TenantName

    class Tenant(Reply):
        name: str
        created_at: float

    @operation(body=CreateTenant, responses={201: Tenant}, errors=(403, 409))
    async def create_tenant(request: Request) -> Response:
        body = await read_model(request, CreateTenant)
        ...

- ``body``: a ``Body`` model (JSON), a ``Raw`` (bytes of a media type) or a ``Stream``, or a tuple
  of these when the route tells them apart by content type; absent when it takes no body
  (``body_required=False`` when an empty body is fine);
- ``responses``: status to a ``Reply`` model, ``Raw``, ``Stream`` (server-sent events, NDJSON, Git
  pack data), a tuple of these (one status, several media types) or ``None`` (no content);
- ``errors``: the statuses the route itself may answer, each with the shared error schema
  (401 unless public, and ``default``, are always declared with it too);
- ``path``, ``query`` and ``headers``: parameter name to an annotated type (``Annotated[int, Field(ge=1)]``);
- ``security``: ``"bearer"`` (the default), ``"public"``, ``"git"`` or ``"peer"``.

Bodies are read by ``read_model`` (or ``read_validated``, which also gives the validated data as a
dict for a capability that parses it itself): ``read_json`` first (the node's one body reader, with
the strict JSON rules of ``edgenode.api.parsing``), then the model: a mismatch is ``400
validation_failed`` naming the ``field``. A ``Body`` takes ``null`` as "absent" (as the older field
helpers did), so an optional field is declared with its default (``name: str = ""``) and the document
marks it nullable; ``Json`` types a field that holds any JSON value. Whatever a capability checks
beyond types (a name's pattern, a number's bounds) belongs in the model too, or the fuzzing tests
find the difference. Replies are not validated at run time: the fuzzing tests check them.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator
from pydantic.fields import FieldInfo
from starlette.requests import Request
from starlette.responses import Response

from edgenode.api.common import read_json
from edgenode.errors import ValidationFailed

__all__ = ["Base64", "Body", "Json", "NoNul", "Operation", "Raw", "Reply", "Security", "Stream", "operation",
           "operation_of", "pattern", "read_model", "read_validated", "validate"]

M = TypeVar("M", bound=BaseModel)
Endpoint = Callable[[Request], Awaitable[Response]]
E = TypeVar("E", bound=Endpoint)
Security = Literal["bearer", "public", "git", "peer"]

_ATTR = "__edgenode_operation__"


#: Where the document keeps the schema of any JSON value the parsing rules take.
JSON_VALUE_REF = "#/components/schemas/JsonValue"
#: Stands for that reference in a model's own schema (which has no such component); the document
#: replaces it with the reference.
JSON_VALUE_MARK = "x-edgenode-json-value"


def json_value_schema(int_min: int, int_max: int) -> dict[str, Any]:
    """The schema of any JSON value ``edgenode.api.parsing`` takes: integers within 64 bits, nothing else odd."""
    ref = {"$ref": JSON_VALUE_REF}
    return {"description": "Any JSON value, integers within 64 bits (the parsing rules refuse others)",
            "anyOf": [{"type": "null"}, {"type": "boolean"}, {"type": "string"},
                      {"type": "integer", "minimum": int_min, "maximum": int_max},
                      {"type": "number", "not": {"type": "integer"}},
                      {"type": "array", "items": ref}, {"type": "object", "additionalProperties": ref}]}


#: Any JSON value (a field the node passes on without looking inside: a run's input, an event's payload).
Json = Annotated[Any, WithJsonSchema({JSON_VALUE_MARK: True})]


def _body_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """A ``Body``'s JSON Schema: optional properties nullable; one of ``requires_one_of`` present;
    fields it ignores may hold any JSON value."""
    _nullable_optionals(schema)
    if schema.get("additionalProperties") is not False:
        schema["additionalProperties"] = {JSON_VALUE_MARK: True}
    names: tuple[str, ...] = getattr(cls, "requires_one_of", ())
    if names:
        schema["anyOf"] = [{"required": [n], "properties": {n: {"not": {"type": "null"}}}} for n in names]


def _nullable_optionals(schema: dict[str, Any]) -> None:
    """Mark every optional property nullable: a ``Body`` takes ``null`` as the field left out."""
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        if name in required or _takes_null(prop):
            continue
        kept = {k: prop.pop(k) for k in ("title", "description", "default") if k in prop}
        schema["properties"][name] = {"anyOf": [prop, {"type": "null"}], **kept}


def _takes_null(prop: dict[str, Any]) -> bool:
    kind = prop.get("type")
    if prop == {} or prop.get(JSON_VALUE_MARK) is True or kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(_takes_null(p) for p in prop.get("anyOf", ()))


class Body(BaseModel):
    """Base of request body models: strict JSON types, unknown fields ignored, ``null`` taken as absent.

    A number with no fraction (``3.0``) is an integer, as JSON Schema has it. ``requires_one_of``
    names fields of which at least one must be given (the route checks it; the document says it).
    """

    requires_one_of: ClassVar[tuple[str, ...]] = ()

    # Python's regex engine: the capabilities' own name patterns (lookarounds included) apply unchanged.
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True, frozen=True,
                              regex_engine="python-re", json_schema_extra=_body_schema)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        ints = _int_fields(cls)
        return {k: int(v) if k in ints and isinstance(v, float) and v.is_integer() else v
                for k, v in data.items() if v is not None}


@functools.cache
def _int_fields(cls: type[BaseModel]) -> frozenset[str]:
    """The JSON names of ``cls``'s fields that take an integer."""
    names = set()
    for name, info in cls.model_fields.items():
        kinds = typing.get_args(info.annotation) or (info.annotation,)
        if int in kinds or any(int in typing.get_args(k) for k in kinds):
            names.add(info.alias or name)
    return frozenset(names)


class Reply(BaseModel):
    """Base of response models: what a route answers (fields beyond those listed may appear)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


@dataclass(frozen=True)
class Raw:
    """A body or reply that is bytes of ``media_type``, not JSON."""

    media_type: str = "application/octet-stream"
    description: str = ""


@dataclass(frozen=True)
class Stream:
    """A streamed reply (or body): ``format`` is ``sse``, ``ndjson``, ``text`` or ``git``.

    ``item`` is the model of one event's data (``sse``) or one line (``ndjson``), for the document.
    """

    media_type: str
    format: Literal["sse", "ndjson", "text", "git"]
    item: type[BaseModel] | None = None
    description: str = ""


Content = type[BaseModel] | Raw | Stream | tuple[type[BaseModel] | Raw | Stream, ...] | None
#: A body: one kind, or several (a JSON model and a raw media type) the route tells apart by content type.
BodyKind = type[BaseModel] | Raw | Stream | tuple[type[BaseModel] | Raw | Stream, ...]


@dataclass(frozen=True)
class Operation:
    """What one endpoint takes and answers, as ``@operation`` declared it."""

    body: BodyKind | None = None
    responses: Mapping[int, Content] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    path: Mapping[str, Any] = field(default_factory=dict)
    query: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, Any] = field(default_factory=dict)
    security: Security = "bearer"
    body_required: bool = True
    tags: tuple[str, ...] = ()


def operation(*, body: BodyKind | None = None, responses: Mapping[int, Content],
              errors: Iterable[int] = (), path: Mapping[str, Any] | None = None,
              query: Mapping[str, Any] | None = None, headers: Mapping[str, Any] | None = None,
              security: Security = "bearer", body_required: bool = True) -> Callable[[E], E]:
    """Declare what the decorated endpoint takes and answers (see the module docstring)."""
    op = Operation(body=body, responses=dict(responses), errors=tuple(errors), path=dict(path or {}),
                   query=dict(query or {}), headers=dict(headers or {}), security=security,
                   body_required=body_required)

    def declare(endpoint: E) -> E:
        setattr(endpoint, _ATTR, op)
        return endpoint

    return declare


#: Base64 text (standard alphabet, padded), as ``base64.b64decode(..., validate=True)`` takes it.
Base64 = Annotated[str, Field(pattern="^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")]
#: Text without NUL, which no file name, argument or variable may hold.
NoNul = Annotated[str, Field(pattern="^[^\\x00]*$")]


def pattern(regex: re.Pattern[str], description: str = "") -> FieldInfo:
    """A string field matching a capability's own name regex (``\\Z`` anchors become ``$``)."""
    text = regex.pattern.replace("\\Z", "$")
    if not text.endswith("$"):
        text += "$"
    info: FieldInfo = Field(pattern=text, description=description or None)
    return info


def operation_of(endpoint: Any) -> Operation | None:
    """The declaration of ``endpoint``, or None when it has none."""
    found: Operation | None = getattr(endpoint, _ATTR, None)
    return found


async def read_model(request: Request, model: type[M], limit: int | None = None, *, optional: bool = False) -> M:
    """The JSON body, by the node's parsing rules, validated by ``model``; 400 naming the field.

    ``limit`` and ``optional`` are ``read_json``'s: an empty body is ``{}`` with ``optional``.
    """
    _check_declared(request, model)
    return validate(model, await read_json(request, limit, optional=optional))


async def read_validated(request: Request, model: type[M], limit: int | None = None, *,
                         optional: bool = False) -> tuple[M, dict[str, Any]]:
    """The body validated by ``model``, and as plain data for capabilities that parse it further.

    The data holds the fields the client set (nulls left out, as absent), under their JSON names.
    """
    body = await read_model(request, model, limit, optional=optional)
    return body, body.model_dump(by_alias=True, exclude_unset=True)


def validate(model: type[M], data: Any) -> M:
    """``data`` (already parsed JSON) as ``model``; ``ValidationFailed`` naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _failure(exc) from None


def _check_declared(request: Request, model: type[BaseModel]) -> None:
    declared = operation_of(request.scope.get("endpoint"))
    if declared is None:
        return
    kinds = declared.body if isinstance(declared.body, tuple) else (declared.body,)
    if model not in kinds:
        raise RuntimeError(f"{request.url.path} reads a {model.__name__} body, which its @operation does not declare")


_MESSAGES = {
    "string_type": "must be a string", "int_type": "must be an integer", "float_type": "must be a number",
    "bool_type": "must be a boolean", "dict_type": "must be an object", "model_type": "must be an object",
    "list_type": "must be an array", "int_from_float": "must be an integer",
}


def _failure(exc: ValidationError) -> ValidationFailed:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = _dotted(error["loc"]) or "body"
    kind = error["type"]
    if kind == "missing":
        text = "is required"
    elif kind in _MESSAGES:
        text = _MESSAGES[kind]
    elif kind.startswith("union_tag") or kind == "literal_error":
        text = error["msg"][0].lower() + error["msg"][1:]
    else:
        msg: str = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        text = msg[0].lower() + msg[1:] if msg else "is not valid"
    if kind == "extra_forbidden":
        text = "is not a field this route takes"
    return ValidationFailed(f"field {where!r} {text}", field=where)


#: Names pydantic puts in an error's location for a union member (fields of this API are lower case).
_NOT_PLACES = {"str", "int", "float", "bool", "dict", "list", "none", "literal", "constrained-str"}


def _dotted(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as parsing's dotted path: ``limits.cpu_ms``, ``files[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _NOT_PLACES or "[" in part or "-" in part or part[:1].isupper():
            continue  # a union member's or a validator's own name, not a place in the body
        else:
            out += f".{part}" if out else str(part)
    return out
