"""OpenAPI 3.1 documents built from the pydantic models the routes validate and return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from webapi.errors import ErrorBody

_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI template, e.g. /v1/ingest/meter/{deviceId}/current
    summary: str
    scope: str | None = None  # "read" | "write" | None (public)
    request: Any = None  # a model or type, JSON body
    request_media_type: str = "application/json"
    responses: dict[int, tuple[Any, str]] = field(default_factory=dict)  # status -> (model|None, text)
    parameters: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""


def path_param(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def query_param(name: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, source: Any, mode: JsonSchemaMode) -> dict[str, Any]:
        schema = TypeAdapter(source).json_schema(ref_template=_REF, mode=mode)
        self.schemas.update(schema.pop("$defs", {}))
        if isinstance(source, type) and issubclass(source, BaseModel):
            self.schemas[source.__name__] = schema
            return {"$ref": _REF.format(model=source.__name__)}
        return schema


def build_openapi(title: str, version: str, description: str, operations: list[Operation]) -> dict[str, Any]:
    components = _Components()
    error_ref = components.ref(ErrorBody, "serialization")
    paths: dict[str, Any] = {}
    for op in operations:
        entry: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op), "responses": {}}
        if op.description:
            entry["description"] = op.description
        if op.parameters:
            entry["parameters"] = op.parameters
        if op.request is not None:
            schema = {"type": "string"} if op.request is str else components.ref(op.request, "validation")
            entry["requestBody"] = {"required": True, "content": {op.request_media_type: {"schema": schema}}}
        for status, (model, text) in sorted(op.responses.items()):
            response: dict[str, Any] = {"description": text}
            if model is not None:
                response["content"] = {"application/json": {"schema": components.ref(model, "serialization")}}
            entry["responses"][str(status)] = response
        if op.scope:
            entry["security"] = [{"token": [op.scope]}]
            entry["responses"].setdefault("401", {"description": "missing or invalid token"})
            entry["responses"].setdefault("403", {"description": f"the token lacks the {op.scope} scope"})
        if op.method in ("POST", "PUT"):
            entry["responses"].setdefault("408", {"description": "the request did not arrive in full within "
                                                  "the request timeout; the connection is closed"})
        for status in list(entry["responses"]):
            if status[0] in "45" and "content" not in entry["responses"][status]:
                entry["responses"][status]["content"] = {"application/json": {"schema": error_ref}}
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "securitySchemes": {
                "token": {
                    "type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "'Token <token>' or 'Bearer <token>'; scopes: write (devices), read (queries).",
                }
            },
        },
    }


def _operation_id(op: Operation) -> str:
    words = [part.strip("{}") for part in op.path.strip("/").split("/") if part]
    return op.method.lower() + "_" + "_".join(words).replace("-", "_").replace(".", "_")
