"""The OpenAPI document of the API, complete enough for fuzzers and generated clients.

FastAPI derives paths and parameters from the routes; what it cannot see is added here:
the request bodies (the routes read their bodies raw, so that a bad document is refused
by admission with a field path, not by FastAPI), one JSON schema per kind taken from the
pydantic models of ``kled.resources.kinds``, the ``Status`` body of every refusal, the
bearer-token scheme, and the bodies of the few routes outside the kind registry (apply,
clone, node registration, GraphQL). Routes ask for their parts with :func:`write_body`
and :func:`responses`; :func:`document` puts the shared schemas in ``components``.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from kled.resources.kinds import model_for
from kled.resources.registry import KINDS

REF = "#/components/schemas/{model}"

#: every refusal the API answers with, all as a ``Status`` body
ERRORS: dict[int, str] = {
    400: "the request is malformed",
    401: "missing, unknown, expired or revoked token",
    403: "the token's role may not do this",
    404: "no such resource, or in a team the token cannot see",
    409: "a conflict: the resource exists, or the resourceVersion is stale",
    413: "the body is over the server's limit",
    422: "the request or the document is invalid (Status.field names the path)",
    503: "the server cannot do this now (no Message Office, or the database is unreachable)",
}

_STRING_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Status": {
        "type": "object",
        "description": "Why a request was refused, as Kubernetes answers.",
        "required": ["apiVersion", "kind", "status", "code", "reason", "message"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"const": "Status"},
            "status": {"const": "Failure"},
            "code": {"type": "integer"},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "field": _STRING_OR_NULL,
            "policy": {"type": "string"},
        },
    },
    "Object": {
        "type": "object",
        "description": "A stored resource as the API presents it (secrets redacted).",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "team": {"type": "string"},
                    "environment": {"type": "string"},
                    "uid": {"type": "string"},
                    "resourceVersion": {"type": "string"},
                    "generation": {"type": "integer"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "spec": {"type": "object"},
            "data": {"type": "object"},
            "status": {"type": "object"},
        },
    },
    "Outcome": {
        "type": "object",
        "description": "The result of a write: the object as stored and any warnings.",
        "required": ["result", "object", "warnings"],
        "properties": {
            "result": {
                "type": "string",
                "description": "created | configured | unchanged | deleted | deleting",
            },
            "object": {"$ref": REF.format(model="Object")},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "token": {"type": "string", "description": "a new Token's secret, shown once"},
        },
    },
    "List": {
        "type": "object",
        "required": ["apiVersion", "kind", "items", "metadata"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"const": "List"},
            "items": {"type": "array", "items": {"$ref": REF.format(model="Object")}},
            "metadata": {
                "type": "object",
                "properties": {"continue": _STRING_OR_NULL, "resourceVersion": {"type": "string"}},
            },
        },
    },
    "StatusWrite": {
        "type": "object",
        "description": "A new status, bare or as {status, metadata.resourceVersion}.",
        "properties": {
            "status": {"type": "object"},
            "metadata": {
                "type": "object",
                "properties": {"resourceVersion": {"type": "string"}},
            },
        },
    },
    "Items": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": {"type": "object"}}},
    },
}


def ref(model: str) -> dict[str, Any]:
    return {"$ref": REF.format(model=model)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def write_body(kind: str | None) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body is one document of ``kind`` (None: any)."""
    schema = ref(kind) if kind else {"oneOf": [ref(info.kind) for info in KINDS]}
    return {"requestBody": {"required": True, "content": _json(schema)}}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads a small JSON object of its own."""
    return {"requestBody": {"required": True, "content": _json(schema)}}


def no_body() -> dict[str, Any]:
    """``openapi_extra`` of a POST that reads nothing from its body (``{}`` may be sent)."""
    return {"requestBody": {"required": False, "content": _json({"type": "object"})}}


def bytes_body(description: str) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body is raw bytes."""
    content = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


#: ``openapi_extra`` of a route a node's agent calls with its Message Office credentials
NODE_LOGIN: dict[str, Any] = {"security": [{"node": []}]}


def responses(
    code: int, model: str, description: str = "", stream: str | None = None
) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: its success as ``model`` (refusals are added to all)."""
    content = _json(ref(model))
    if stream:
        content[stream] = {"schema": {"type": "string"}}
    return {code: {"description": description or model, "content": content}}


def stream(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route whose success is a stream (``text/event-stream``…)."""
    return {200: {"description": description, "content": {media_type: {"schema": {}}}}}


@cache
def kind_schemas() -> dict[str, dict[str, Any]]:
    """One validation schema per kind (``App``…) and what they refer to, as components."""
    models: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (model_for(info.kind), "validation") for info in KINDS
    ]
    _, top = models_json_schema(models, by_alias=True, ref_template=REF)
    return dict(top.get("$defs", {}))


# ---- the parts of routes outside this module's reach -------------------------------------

_GRAPHQL_BODY = {
    "type": "object",
    "required": ["query"],
    "properties": {
        "query": {"type": "string"},
        "variables": {"type": ["object", "null"]},
        "operationName": _STRING_OR_NULL,
    },
}
_GRAPHQL_RESULT = {
    "type": "object",
    "properties": {"data": {"type": ["object", "null"]}, "errors": {"type": "array"}},
}


def _complete(doc: dict[str, Any]) -> None:
    """Bearer auth instead of a header parameter; Status for every refusal; GraphQL."""
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            params = [
                p
                for p in op.get("parameters", [])
                if not (p.get("in") == "header" and p.get("name", "").lower() == "authorization")
            ]
            if len(params) != len(op.get("parameters", [])):
                op["security"] = [{"bearer": []}]
            if params:
                op["parameters"] = params
            else:
                op.pop("parameters", None)
            answers = op.setdefault("responses", {})
            for status, why in ERRORS.items():
                given = answers.get(str(status), {})
                if "HTTPValidationError" in json.dumps(given) or not given.get("content"):
                    # FastAPI's own 422 body is not what the API answers: a Status is
                    answers[str(status)] = {
                        "description": given.get("description", why),
                        "content": _json(ref("Status")),
                    }
            # a request the HTTP server cannot parse (a header with a bad byte) never
            # reaches the application: the server answers it in plain text
            answers["400"]["content"]["text/plain"] = {"schema": {"type": "string"}}
            if path == "/graphql":
                _graphql(method, op)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(copy.deepcopy(kind_schemas()))
    schemas.update(copy.deepcopy(SCHEMAS))
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "a Kled token"},
        "node": {
            "type": "http",
            "scheme": "basic",
            "description": "a node's Message Office user and password",
        },
    }


def _graphql(method: str, op: dict[str, Any]) -> None:
    op["summary"] = "GraphQL (the schema is at the same path, by introspection)"
    result = _json(_GRAPHQL_RESULT)
    if method == "get":
        # a GET with no query is a person in a browser: GraphiQL
        result["text/html"] = {"schema": {"type": "string"}}
    op["responses"]["200"] = {"description": "a GraphQL result", "content": result}
    op["responses"]["400"] = {
        "description": "no query, or one that is not GraphQL",
        "content": {**_json(ref("Status")), "text/plain": {"schema": {"type": "string"}}},
    }
    if method == "post":
        op["requestBody"] = {"required": True, "content": _json(_GRAPHQL_BODY)}
    else:
        op["parameters"] = [
            {"name": "query", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "variables", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "operationName", "in": "query", "schema": {"type": "string"}},
        ]


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, built once."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        _complete(doc)
        app.openapi_schema = doc
    return app.openapi_schema


def install(app: FastAPI) -> None:
    """Serve :func:`document` at ``/openapi.json``."""
    app.openapi = lambda: document(app)  # type: ignore[method-assign]
