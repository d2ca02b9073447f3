"""What the OpenAPI schema says beyond what Litestar infers: the error answers, the bearer token,
and that request bodies refuse unknown fields. A client (or schemathesis) reads the schema as the
contract, so it must list every status a route can answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, get_args

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.datastructures import MutableScopeHeaders
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, Schema, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope
from litestar.typing import FieldDefinition

from gateway.models import Identifier

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

IDENTIFIER_PATTERN: str = get_args(Identifier)[1].pattern

BEARER = "BearerToken"
SECURITY_COMPONENTS = Components(
    security_schemes={BEARER: SecurityScheme(type="http", scheme="bearer", description="the admin or a tenant token")}
)
BEARER_REQUIRED = [{BEARER: []}]


# `?as_of=`: a version number, or an RFC 3339 time (gateway/views.py parse_as_of).
AS_OF_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "pattern": "^[0-9]{1,18}$", "description": "a version of the run"},
        {"type": "string", "format": "date-time", "description": "a moment, with its time zone"},
    ],
}


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error answer (gateway/errors.py)."""

    status_code: int
    detail: str
    extra: Any = None


_WHY = {
    401: "no valid bearer token",
    403: "this needs the admin token",
    404: "not found (or another tenant's)",
    409: "the id is taken",
    410: "it existed, and has expired",
    413: "the request body is over 1 MiB",
    422: "a parameter or the body is invalid",
    429: "over the tenant's push rate or queued-runs quota; see Retry-After",
    503: "the event store or NATS is unavailable; retry (see Retry-After)",
}
# What any route behind the token can answer.
_ALWAYS = (401, 422, 503)


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """The error answers of a route behind the token: 401, 422, 503, and `codes`."""
    return {
        code: ResponseSpec(data_container=ErrorBody, description=_WHY[code], generate_examples=False)
        for code in sorted({*_ALWAYS, *codes})
    }


class ClosedStructSchemaPlugin(StructSchemaPlugin):
    """Structs with `forbid_unknown_fields` get `additionalProperties: false`, as msgspec enforces.

    Litestar's own plugin leaves it out, so the schema promised that unknown fields were accepted."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return super().is_plugin_supported_field(field_definition) and bool(
            getattr(field_definition.type_, "__struct_config__", None)
            and field_definition.type_.__struct_config__.forbid_unknown_fields
        )

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        _keep_item_patterns(schema, field_definition.type_)
        return schema


def _keep_item_patterns(schema: Schema, struct_type: type) -> None:
    """Litestar drops the `pattern` of a list's items (`list[Annotated[str, Meta(pattern=...)]]`),
    so the schema promised that any string was accepted; copy it from msgspec's own schema."""
    _, components = msgspec.json.schema_components([struct_type])
    declared = components.get(struct_type.__name__, {}).get("properties", {})
    for name, prop in (schema.properties or {}).items():
        source = declared.get(name, {})
        patterns = [v["items"]["pattern"] for v in source.get("anyOf", [source])
                    if isinstance(v.get("items"), dict) and "pattern" in v["items"]]
        if not patterns or not isinstance(prop, Schema):
            continue
        for target in [prop, *(prop.one_of or [])]:
            if isinstance(target, Schema) and isinstance(target.items, Schema):
                target.items.pattern = patterns[0]


async def allow_every_method(message: Message, scope: Scope) -> None:
    """`before_send`: Litestar's automatic answer to OPTIONS lists only the methods of the handler registered
    first on a path (`Allow: GET, OPTIONS` for /tenants/{id}, which serves PATCH too); list them all."""
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS" or message["status"] != 204:
        return
    for route in scope["app"].routes:
        if isinstance(route, HTTPRoute) and route.path_format == scope.get("path_template"):
            MutableScopeHeaders.from_message(message)["allow"] = ", ".join(sorted(route.methods))
