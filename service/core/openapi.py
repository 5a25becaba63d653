"""What the OpenAPI document says about bodies, errors and authentication, in one place for every domain.

* Bodies: :class:`StructSchemas` gives every msgspec struct of the service the JSON Schema msgspec itself
  validates against (unknown fields, item constraints and all), plus what a struct declares in
  ``__schema_extra__`` for rules checked after decoding (e.g. "a corpus or a Q&A pair").
* Errors: every error answers the envelope of :mod:`service.core.errors`; :class:`ErrorResponse` is that
  envelope as a component schema, and :func:`errors` documents the statuses a route answers with it.
* Authentication: routes that take an API key declare :data:`SECURITY` (``Authorization: Bearer`` or
  ``X-API-Key``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Response, route
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition
from msgspec import Struct


class ErrorDetail(Struct):
    """What went wrong: ``param`` names the field or header to change (null when none is to blame)."""

    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(Struct):
    """The error envelope of every route (the one the official ``openai`` client reads)."""

    error: ErrorDetail


# Why each status is answered; a route may add its own wording.
DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request (a header, parameter or body the server cannot take); `param` names it.",
    401: "Missing or unknown API key.",
    403: "The key's role may not do this.",
    404: "Not found (another tenant's object is a 404 too).",
    409: "The object's state forbids this now.",
    413: "A body or corpus over the configured size limit.",
    422: "Well-formed but invalid; `param` names the field.",
    429: "Slow down: a rate limit or quota was reached; retry after `Retry-After` seconds.",
    503: "A dependency (the model, Redis, the database) is unavailable; retry after `Retry-After` seconds.",
}

BEARER = "BearerAuth"
API_KEY = "ApiKeyAuth"
#: Either scheme authenticates (an OpenAPI security list is a list of alternatives).
SECURITY: list[dict[str, list[str]]] = [{BEARER: []}, {API_KEY: []}]
#: Statuses every authenticated route can answer before it runs: no key (401), or a key whose role the
#: route does not admit (403).
AUTH = (401, 403)


def components() -> Components:
    """The security schemes, for the app's ``OpenAPIConfig``."""
    return Components(
        security_schemes={
            BEARER: SecurityScheme(
                type="http", scheme="bearer", description="An API key: `Authorization: Bearer obl_...`."
            ),
            API_KEY: SecurityScheme(
                type="apiKey", name="X-API-Key", security_scheme_in="header", description="An API key."
            ),
        }
    )


def errors(*codes: int, **why: str) -> dict[int, ResponseSpec]:
    """``responses=`` for a route: each status in ``codes`` answers :class:`ErrorResponse`.

    ``why`` overrides a status's description (``why={"409": "..."}`` is spelled ``s409="..."``).
    """
    out: dict[int, ResponseSpec] = {}
    for code in sorted(set(codes)):
        description = why.get(f"s{code}") or DESCRIPTIONS[code]
        out[code] = ResponseSpec(
            data_container=ErrorResponse, description=description, generate_examples=False
        )
    return out


def responses(*codes: int, extra: dict[int, ResponseSpec] | None = None, **why: str) -> dict[int, Any]:
    """:func:`errors` plus other documented answers of the route (e.g. a 204)."""
    return {**errors(*codes, **why), **(extra or {})}


#: A string without NUL characters (PostgreSQL text cannot hold U+0000; such values are refused with a 400).
NO_NUL = "^[^\\u0000]*$"
#: A string with at least one character that is not whitespace.
NOT_BLANK = "\\S"
_REF = "#/components/schemas/{name}"
# JSON Schema keywords of a struct's own schema -> attributes of Litestar's ``Schema``.
_SCHEMA_ATTRIBUTES = {
    "title": "title",
    "description": "description",
    "type": "type",
    "properties": "properties",
    "required": "required",
    "additionalProperties": "additional_properties",
    "anyOf": "any_of",
    "allOf": "all_of",
    "oneOf": "one_of",
    "not": "not_",
}


def _structs(tp: Any) -> dict[str, type[Struct]]:
    """Every struct class reachable from ``tp``, by the name msgspec gives its schema."""
    found: dict[str, type[Struct]] = {}
    for info in msgspec.inspect.multi_type_info([tp]):
        stack: list[Any] = [info]
        while stack:
            node = stack.pop()
            if isinstance(node, msgspec.inspect.StructType):
                if node.cls.__name__ in found:
                    continue
                found[node.cls.__name__] = node.cls
                stack.extend(field.type for field in node.fields)
            elif isinstance(node, msgspec.inspect.Metadata):
                stack.append(node.type)
            elif isinstance(node, msgspec.inspect.UnionType):
                stack.extend(node.types)
            elif isinstance(node, msgspec.inspect.CollectionType):
                stack.append(node.item_type)
            elif isinstance(node, msgspec.inspect.DictType):
                stack.extend((node.key_type, node.value_type))
    return found


class StructSchemas(OpenAPISchemaPlugin):
    """The schemas of the service's msgspec structs, as msgspec validates them.

    Litestar's own struct schemas drop what msgspec enforces on list items and on unknown fields, so a
    schema-valid body could be refused; here the document and the decoder cannot disagree.
    """

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return (
            not field_definition.is_union
            and field_definition.is_subclass_of(Struct)
            and field_definition.type_.__module__.startswith("service.")
        )

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        cls = field_definition.type_
        _, definitions = msgspec.json.schema_components([cls], ref_template=_REF)
        nested = _structs(cls)
        own = dict(definitions[cls.__name__])
        own.update(getattr(cls, "__schema_extra__", {}))
        schema: Schema = schema_creator.schema_registry.get_schema_for_field_definition(field_definition)
        # Registered before the nested structs are, so a struct that refers to itself finds its reference.
        for key, value in own.items():
            if key in _SCHEMA_ATTRIBUTES:
                setattr(schema, _SCHEMA_ATTRIBUTES[key], self._link(value, nested, schema_creator))
        return schema

    def _link(self, value: Any, nested: dict[str, type[Struct]], schema_creator: Any) -> Any:
        """msgspec's ``$ref``s become Litestar references, so nested structs are registered components."""
        if isinstance(value, dict):
            ref = value.get("$ref")
            if isinstance(ref, str) and len(value) == 1:
                name = ref.rsplit("/", 1)[-1]
                result: Reference | Schema = schema_creator.for_field_definition(
                    FieldDefinition.from_annotation(nested[name])
                )
                return result
            return {key: self._link(item, nested, schema_creator) for key, item in value.items()}
        if isinstance(value, list):
            return [self._link(item, nested, schema_creator) for item in value]
        return value


def operation(
    *,
    required_headers: dict[str, dict[str, Any]] | None = None,
    optional_headers: dict[str, dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    media_type: str = "application/json",
    optional_body: bool = False,
) -> type[Operation]:
    """An ``operation_class`` for what a handler checks itself (so it can answer 400 in its own words).

    ``required_headers`` maps a header to the JSON Schema of its value: it is documented as required
    with that schema; ``optional_headers`` likewise, not required. ``body`` is the JSON Schema of a body
    the handler parses itself. ``optional_body``: the body may be left out (``data: X | None = None``).
    """
    headers = {**(optional_headers or {}), **(required_headers or {})}
    required = set(required_headers or {})

    @dataclass
    class Documented(Operation):
        def __post_init__(self) -> None:
            # Litestar adds a 400 in its own error body to any route with parameters; validation errors
            # answer 422 in the envelope here, so that 400 is dropped unless the route documents one.
            for status, response in list((self.responses or {}).items()):
                content = getattr(response, "content", None) or {}
                schema = getattr(content.get("application/json"), "schema", None)
                if isinstance(schema, Schema) and "status_code" in (schema.properties or {}):
                    del self.responses[status]  # type: ignore[union-attr]
            for parameter in self.parameters or []:
                rule = headers.get(parameter.name) if isinstance(parameter, Parameter) else None
                if rule is not None and parameter.param_in == "header":
                    parameter.required = parameter.name in required
                    parameter.schema = dict(rule)  # type: ignore[assignment]
            if body is not None:
                self.request_body = RequestBody(
                    content={media_type: OpenAPIMediaType(schema=body)},  # type: ignore[arg-type]
                    required=True,
                )
            if optional_body and isinstance(self.request_body, RequestBody):
                self.request_body.required = False

    return Documented


#: For routes with nothing else to add to their operation (drops Litestar's own 400, see ``operation``).
PLAIN = operation()


def allow(*methods: str) -> Any:
    """An OPTIONS handler answering ``Allow: methods``, for a path with several handlers.

    Litestar builds the automatic OPTIONS handler when a path's first handler is registered and keeps
    it when more handlers join that path, so its ``Allow`` header lists only the first one's method.
    """
    value = ", ".join(sorted({*methods, "OPTIONS"}))

    @route("/", http_method=["OPTIONS"], include_in_schema=False, status_code=204)
    async def options(self: Any) -> Response[None]:
        return Response(content=None, status_code=204, headers={"Allow": value})

    return options
