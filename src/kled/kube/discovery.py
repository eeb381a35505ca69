"""Discovery and OpenAPI documents: how kubectl learns what a cluster serves.

kubectl reads ``/api`` and ``/apis`` then each group version's resource list (legacy
discovery; we answer plain ``application/json``, so clients that first ask for aggregated
discovery fall back to it), and ``/openapi/v3`` for schemas. kubectl validates manifests on
the server (``fieldValidation``) when a group version's OpenAPI document has a ``PATCH``
operation for the kind that declares that query parameter; that is what these documents
are for. Component schemas carry no ``x-kubernetes-group-version-kind``, so kubectl computes
``apply`` patches from its own built-in types (with the real merge keys).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kled.kube.served import GROUPS, SERVED, Served, in_group_version

KUBE_VERSION = {"major": "1", "minor": "30"}


def version() -> dict[str, Any]:
    return {
        **KUBE_VERSION,
        "gitVersion": "v1.30.0+kled",
        "gitCommit": "kled",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.22",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }


def _group(name: str) -> dict[str, Any]:
    versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in GROUPS[name]]
    return {"name": name, "versions": versions, "preferredVersion": versions[0]}


def api_group_list() -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(name) for name in GROUPS],
    }


def api_group(name: str) -> dict[str, Any] | None:
    if name not in GROUPS:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name)}


def _resource(served: Served) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": served.plural,
        "singularName": served.singular,
        "namespaced": served.namespaced,
        "kind": served.kind,
        "verbs": list(served.verbs),
        "storageVersionHash": _hash(served.group_version + served.kind)[:12],
    }
    if served.short_names:
        entry["shortNames"] = list(served.short_names)
    if served.categories:
        entry["categories"] = list(served.categories)
    return entry


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    served = in_group_version(group, version)
    if not served:
        return None
    resources = []
    for item in served:
        resources.append(_resource(item))
        for sub in item.subresources:
            resources.append(
                {
                    "name": f"{item.plural}/{sub}",
                    "singularName": "",
                    "namespaced": item.namespaced,
                    "kind": "Scale" if sub == "scale" else item.kind,
                    "verbs": ["get"] if sub == "log" else ["get", "patch", "update"],
                    **({"group": "autoscaling", "version": "v1"} if sub == "scale" else {}),
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


# ---- OpenAPI v3 -------------------------------------------------------------------------


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_root(prefix: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for group, version in {(s.group, s.version) for s in SERVED}:
        gv = _gv_path(group, version)
        digest = _hash(json.dumps(openapi_group_version(group, version), sort_keys=True))
        paths[gv] = {"serverRelativeURL": f"{prefix}/openapi/v3/{gv}?hash={digest[:32].upper()}"}
    return {"paths": dict(sorted(paths.items()))}


_QUERY = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def _parameters(names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "query", "schema": {"type": "boolean" if n == "force" else "string"}}
        for n in names
    ]


def _schema_name(served: Served) -> str:
    group = f"io.k8s.api.{served.group or 'core'}.{served.version}"
    return f"{group}.{served.kind}"


def openapi_group_version(group: str, version: str) -> dict[str, Any] | None:
    served = in_group_version(group, version)
    if not served:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for item in served:
        ref = {"$ref": f"#/components/schemas/{_schema_name(item)}"}
        gvk = {"group": item.group, "version": item.version, "kind": item.kind}
        content = {"application/json": {"schema": ref}}
        one = item.path("{namespace}" if item.namespaced else None, "{name}")
        operations: dict[str, Any] = {
            "get": {
                "operationId": f"read{item.kind}",
                "x-kubernetes-action": "get",
                "x-kubernetes-group-version-kind": gvk,
                "responses": {"200": {"description": "OK", "content": content}},
            }
        }
        if item.writable:
            for verb, action in (("put", "put"), ("patch", "patch"), ("delete", "delete")):
                operations[verb] = {
                    "operationId": f"{verb}{item.kind}",
                    "x-kubernetes-action": action,
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": _parameters(_QUERY),
                    "responses": {"200": {"description": "OK", "content": content}},
                }
        params = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
        if item.namespaced:
            params.append(
                {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}}
            )
        paths[one] = {**operations, "parameters": params}
        schemas[_schema_name(item)] = {
            "type": "object",
            "description": f"{item.kind} as a Kled Cluster serves it",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "x-kubernetes-preserve-unknown-fields": True,
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kled Cluster", "version": "v1.30.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


# ---- OpenAPI v2 -------------------------------------------------------------------------

OPENAPI_V2_PROTOBUF = "application/octet-stream"  # as the API server answers it


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (lengths here stay under 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def openapi_v2() -> bytes:
    """An OpenAPI v2 document with no definitions, in gnostic's protobuf encoding.

    kubectl before 1.28 fetches ``/openapi/v2`` (protobuf only) before ``apply`` and stops
    if it is missing; with no schema in it for a kind, kubectl computes patches from its
    built-in types, as with the v3 documents above. Fields: swagger (1), info (2: title 1,
    version 2), paths (8), definitions (9).
    """
    info = _field(1, b"Kled Cluster") + _field(2, b"v1.30.0")
    return _field(1, b"2.0") + _field(2, info) + _field(8, b"") + _field(9, b"")
