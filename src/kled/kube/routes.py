"""The HTTP face of Kled Clusters: ``/k8s/{team}/{cluster}/…`` as the Kubernetes API.

One catch-all route parses the Kubernetes path itself (``/api/v1/namespaces/NS/pods/NAME``,
``/apis/apps/v1/deployments``), so that every answer — unknown paths included — is a
``Status`` object as clients expect, never Kled's own error shape. Each request: find the
cluster, identify the caller (``access``), check the role, then read or write through
``ClusterObjects`` with the checks and defaults of ``validation``, the kPolicy admission
chain on the stored document, and the side effects of ``lifecycle``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from kled.admission.request import AdmissionRequest, Operation, UserInfo
from kled.api.service import Service
from kled.errors import Conflict, KledError, NotFound
from kled.kube import (
    access,
    admitting,
    barepods,
    containers,
    deletion,
    discovery,
    endpoints,
    jobs,
    jobsync,
    lifecycle,
    mirror,
    nodes,
    patching,
    quota,
    selection,
    tables,
    validation,
    workloads,
)
from kled.kube.objects import WRAPPER, ClusterObjects, unwrap
from kled.kube.served import GROUPS, Served, by_kind, by_path, in_group_version
from kled.kube.status import KubeError, bad_request, from_kled, invalid, not_found, status_body
from kled.resources import bounds
from kled.store.objects import Key

router = APIRouter()
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
PATCH_TRIES = 5
BOOKMARK_SECONDS = 5.0
MAX_WATCH_SECONDS = 3600


@dataclass
class Call:
    """One request, resolved: who, which cluster, which kind, namespace and name."""

    request: Request
    svc: Service
    team: str
    cluster: str
    spec: dict[str, Any]
    caller: access.Caller
    objects: ClusterObjects
    prefix: str

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)

    def flag(self, name: str) -> bool:
        return (self.query(name) or "").lower() in ("1", "true")

    @property
    def dry_run(self) -> bool:
        return self.query("dryRun") == "All"


@dataclass
class Target:
    served: Served
    namespace: str | None
    name: str | None
    sub: str | None


@router.api_route("/k8s/{team}/{cluster}/{rest:path}", methods=METHODS, include_in_schema=False)
async def kube(request: Request, team: str, cluster: str, rest: str) -> Response:
    try:
        return await _handle(request, team, cluster, rest)
    except KubeError as e:
        return JSONResponse(e.body(), status_code=e.code)
    except KledError as e:
        return JSONResponse(from_kled(e, "", "").body(), status_code=e.status)


async def _handle(request: Request, team: str, cluster: str, rest: str) -> Response:
    svc: Service = request.app.state.service
    doc = await svc.store.find(Key("Cluster", team, "", cluster))
    header = request.headers.get("authorization") or ""
    secret = header[7:].strip() if header.lower().startswith("bearer ") else None
    spec = (doc or {}).get("spec") or {}
    caller = await access.identify(svc, team, cluster, spec, secret)
    if doc is None or doc["metadata"].get("deletionTimestamp"):
        raise not_found("clusters", cluster, "kled.io")
    objects = ClusterObjects(svc.store, team, cluster)
    call = Call(request, svc, team, cluster, spec, caller, objects, f"/k8s/{team}/{cluster}")
    parts = [p for p in rest.split("/") if p]
    method = request.method
    if parts == ["kled", "token"] and method == "POST":
        return await _issue_token(call)
    if parts == ["kled", "node-token"] and method == "POST":
        if call.caller.role != "cluster-admin":
            raise KubeError(403, "Forbidden", "only a cluster-admin may issue node tokens")
        body = await _body(call)
        ttl = body.get("ttl") if isinstance(body, dict) else None
        return _json(await nodes.issue(call.svc, team, cluster, ttl), 201)
    if method == "GET" and parts == ["openapi", "v2"]:
        return Response(discovery.openapi_v2(), media_type=discovery.OPENAPI_V2_PROTOBUF)
    if method == "GET":
        found = _discovery(call, parts)
        if found is not None:
            return _json(found)
    target = _target(parts)
    if target is None:
        raise KubeError(404, "NotFound", "the server could not find the requested resource")
    await lifecycle.ensure_cluster(objects)
    return await _dispatch(call, target, method)


def _json(body: Any, code: int = 200) -> Response:
    return JSONResponse(body, status_code=code)


def _discovery(call: Call, parts: list[str]) -> dict[str, Any] | None:
    if parts == ["version"]:
        return discovery.version()
    if parts == ["api"]:
        return discovery.api_versions()
    if parts == ["apis"]:
        return discovery.api_group_list()
    if len(parts) == 2 and parts[0] == "api":
        return discovery.resource_list("", parts[1])
    if len(parts) == 2 and parts[0] == "apis":
        return discovery.api_group(parts[1])
    if len(parts) == 3 and parts[0] == "apis":
        return discovery.resource_list(parts[1], parts[2])
    if parts[:2] == ["openapi", "v3"]:
        if len(parts) == 2:
            return discovery.openapi_root(call.prefix)
        rest = parts[2:]
        if len(rest) == 2 and rest[0] == "api":
            return discovery.openapi_group_version("", rest[1])
        if len(rest) == 3 and rest[0] == "apis":
            return discovery.openapi_group_version(rest[1], rest[2])
    return None


def _target(parts: list[str]) -> Target | None:
    if len(parts) >= 3 and parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis" and parts[1] in GROUPS:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    plurals = {s.plural for s in in_group_version(group, version) if s.namespaced}
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in plurals:
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    served = by_path(group, version, rest[0])
    if served is None:
        return None
    if namespace is not None and not served.namespaced:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in served.subresources:
        return None
    return Target(served, namespace, name, sub)


def _verb(method: str, target: Target, call: Call) -> str:
    if method == "GET":
        if target.name is None:
            return "watch" if call.flag("watch") else "list"
        return "get"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    return "delete" if target.name else "deletecollection"


async def _dispatch(call: Call, target: Target, method: str) -> Response:
    verb = _verb(method, target, call)
    served = target.served
    access.authorize(call.caller, verb, served, target.namespace)
    if verb not in served.verbs and not (target.sub and verb in ("update", "patch")):
        raise KubeError(
            405,
            "MethodNotAllowed",
            f"{verb} is not supported on resources of kind {served.plural}",
        )
    if method in ("PUT", "PATCH") and target.name is None:
        raise KubeError(405, "MethodNotAllowed", f"{method} needs an object name")
    if served.kind == "Node":
        return await _nodes(call, target, verb)
    if served.kind == "ResourceQuota":
        return await _quotas(call, target, verb)
    if served.kind in ("Endpoints", "EndpointSlice"):
        return await _endpoints(call, target, verb)
    if target.sub == "log":
        if verb != "get":
            raise KubeError(405, "MethodNotAllowed", "pods/log is read-only")
        return await _logs(call, target)
    if target.sub == "scale":
        return await _scale(call, target, verb)
    if verb == "list":
        return await _list(call, target)
    if verb == "watch":
        return await _watch(call, target)
    if verb == "get":
        return await _get(call, target)
    if verb == "create":
        return await _create(call, target)
    if verb == "update":
        return await _update(call, target)
    if verb == "patch":
        return await _patch(call, target)
    if verb == "delete":
        return await _delete(call, target)
    return await _delete_collection(call, target)


# ---- reading ----------------------------------------------------------------------------


def _list_body(served: Served, items: list[dict[str, Any]], revision: int) -> dict[str, Any]:
    for item in items:
        item.setdefault("apiVersion", served.group_version)
        item.setdefault("kind", served.kind)
    return {
        "kind": f"{served.kind}List",
        "apiVersion": served.group_version,
        "metadata": {"resourceVersion": str(revision)},
        "items": items,
    }


async def _list(call: Call, target: Target) -> Response:
    items, revision = await call.objects.list(
        target.served,
        target.namespace,
        labels=selection.labels(call.query("labelSelector")),
        fields=selection.fields(call.query("fieldSelector")),
    )
    if tables.wants_table(call.request.headers.get("accept")):
        return _json(tables.table(target.served, items, str(revision)))
    return _json(_list_body(target.served, items, revision))


async def _find(call: Call, target: Target) -> dict[str, Any]:
    served = target.served
    assert target.name is not None
    obj = await call.objects.find(served, target.namespace or "", target.name)
    if obj is None:
        raise not_found(served.plural, target.name, served.group)
    return obj


async def _get(call: Call, target: Target) -> Response:
    obj = await _find(call, target)
    if tables.wants_table(call.request.headers.get("accept")):
        return _json(tables.table(target.served, [obj], obj["metadata"]["resourceVersion"]))
    return _json(obj)


async def _watch(call: Call, target: Target) -> Response:
    served = target.served
    labels = selection.labels(call.query("labelSelector"))
    fields = selection.fields(call.query("fieldSelector"))
    since = await _watch_since(call, served)
    initial: list[dict[str, Any]] = []
    if since == 0:
        initial, since = await call.objects.list(
            served, target.namespace, labels=labels, fields=fields
        )

    def matches(obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        if target.namespace and meta.get("namespace") != target.namespace:
            return False
        if labels is not None and not labels(meta.get("labels") or {}):
            return False
        return fields is None or fields(obj)

    async def source() -> AsyncIterator[tuple[str, dict[str, Any], int]]:
        async for change in call.objects.changes(since, served):
            if change.type == "BOOKMARK" or matches(change.object):
                yield change.type, change.object, change.revision

    return _watch_stream(call, served, initial, source())


async def _watch_since(call: Call, served: Served) -> int:
    """The watch's ``resourceVersion`` (0: list first), checked against the event log."""
    since_text = call.query("resourceVersion") or "0"
    if not since_text.isdigit():
        raise bad_request(f"invalid resourceVersion {since_text!r}")
    since = int(since_text)
    if since:
        try:
            await call.objects.store.check_since(since)
        except KledError as e:
            raise from_kled(e, served.plural, "", served.group) from None
    return since


def _watch_stream(
    call: Call,
    served: Served,
    initial: list[dict[str, Any]],
    source: AsyncIterator[tuple[str, dict[str, Any], int]],
) -> Response:
    """A watch's response: ``initial`` as ADDED, then each (type, object, revision) of
    ``source``, bookmarks when asked for, until ``timeoutSeconds``."""
    as_table = tables.wants_table(call.request.headers.get("accept"))
    bookmarks = call.flag("allowWatchBookmarks")
    timeout = min(int(call.query("timeoutSeconds") or MAX_WATCH_SECONDS), MAX_WATCH_SECONDS)

    def line(kind: str, obj: dict[str, Any]) -> bytes:
        obj.setdefault("apiVersion", served.group_version)
        obj.setdefault("kind", served.kind)
        shown = tables.table(served, [obj], obj["metadata"]["resourceVersion"]) if as_table else obj
        return (json.dumps({"type": kind, "object": shown}) + "\n").encode()

    async def stream() -> AsyncIterator[bytes]:
        deadline = time.monotonic() + timeout
        for obj in initial:
            yield line("ADDED", obj)
        last_bookmark = time.monotonic()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                kind, obj, revision = await asyncio.wait_for(source.__anext__(), timeout=left)
            except (TimeoutError, StopAsyncIteration):
                return
            if kind == "BOOKMARK":
                if bookmarks and time.monotonic() - last_bookmark > BOOKMARK_SECONDS:
                    last_bookmark = time.monotonic()
                    mark = {
                        "kind": served.kind,
                        "apiVersion": served.group_version,
                        "metadata": {"resourceVersion": str(revision)},
                    }
                    yield (json.dumps({"type": "BOOKMARK", "object": mark}) + "\n").encode()
                continue
            yield line(kind, obj)

    return StreamingResponse(stream(), media_type="application/json")


# ---- writing ----------------------------------------------------------------------------


async def _body(call: Call) -> Any:
    raw = await call.request.body()
    ctype = call.request.headers.get("content-type", "")
    if "protobuf" in ctype or "cbor" in ctype:
        # as the API server answers a content type it does not serve: clients (kubectl's
        # typed ones, since 1.32) send JSON again
        raise KubeError(415, "UnsupportedMediaType",
                        f'the body of the request was in an unknown format - accepted media '
                        f'types include: application/json, application/yaml, '
                        f'application/apply-patch+yaml (not "{ctype}")')  # fmt: skip
    try:
        if "yaml" in ctype:
            doc = yaml.safe_load(raw.decode() or "null")
            bounds.check(doc)
            return doc
        return bounds.loads(raw or b"null")
    except (ValueError, yaml.YAMLError, KledError) as e:
        raise bad_request(f"the body is not valid JSON or YAML: {e}") from None


def _prepare(call: Call, target: Target, doc: Any) -> dict[str, Any]:
    """The body as an object of the target's kind and namespace, or 400."""
    served = target.served
    if not isinstance(doc, dict):
        raise bad_request("the body must be one object")
    api_version, kind = (
        doc.setdefault("apiVersion", served.group_version),
        doc.setdefault("kind", served.kind),
    )
    if (api_version, kind) != (served.group_version, served.kind):
        raise bad_request(
            f"the API version in the data ({api_version}) or kind ({kind}) does not match "
            f"the expected {served.group_version} {served.kind}"
        )
    meta = doc.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise invalid(served.kind, "", [("metadata", "must be an object")])
    if served.namespaced:
        namespace = meta.setdefault("namespace", target.namespace)
        if target.namespace and namespace != target.namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent "
                "on the request"
            )
    else:
        meta.pop("namespace", None)
    if target.name and meta.get("name") and meta["name"] != target.name:
        raise bad_request("the name of the object does not match the name on the URL")
    if target.name:
        meta.setdefault("name", target.name)
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = f"{meta['generateName']}{secrets.token_hex(3)[:5]}"
    strict = call.query("fieldValidation") == "Strict"
    return validation.admit(served, doc, strict=strict)


async def _admit(
    call: Call,
    served: Served,
    op: Operation,
    obj: dict[str, Any] | None,
    old: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """kPolicy: the team's policies see the Kubernetes object (or, those that name
    ``KubeObject``, the stored document); see ``admitting``. A mutated object is checked
    again as the write itself was."""
    wrapped = call.objects.wrap(served, obj) if obj is not None else None
    old_wrapped = call.objects.wrap(served, old) if old is not None else None
    subject = wrapped or old_wrapped
    assert subject is not None
    try:
        admitted = await call.svc.chain.admit(
            AdmissionRequest(
                operation=op,
                kind=WRAPPER,
                name=subject["metadata"]["name"],
                team=call.team,
                environment=call.cluster,
                object=wrapped,
                old_object=old_wrapped,
                user=call.caller.user,
                dry_run=call.dry_run,
                kube=await admitting.kube_request(call.objects, served, obj, old),
            )
        )
    except KledError as e:
        raise admitting.refusal(e) or e from None
    if obj is None or admitted.object is None:
        return obj
    result: dict[str, Any] = admitted.object["spec"]["object"]
    if result != (wrapped or {}).get("spec", {}).get("object"):
        result = validation.admit(served, result)
        _check_runnable(call, served, result)
        await _check_quota(call, served, result, old)
    if obj.get("status"):
        result["status"] = obj["status"]
    return result


async def _require_namespace(call: Call, served: Served, namespace: str | None) -> None:
    if served.namespaced and namespace:
        ns = lifecycle.NAMESPACE
        if await call.objects.find(ns, "", namespace) is None:
            raise not_found("namespaces", namespace)


async def _create(call: Call, target: Target) -> Response:
    served = target.served
    if target.name is not None:
        raise KubeError(405, "MethodNotAllowed", "POST goes to a collection")
    obj = _prepare(call, target, await _body(call))
    name = obj["metadata"]["name"]
    await _require_namespace(call, served, obj["metadata"].get("namespace"))
    _check_runnable(call, served, obj)
    await _check_quota(call, served, obj, None)
    lifecycle.before_create(served, obj)
    obj = await _admit(call, served, Operation.CREATE, obj, None) or obj
    existing = await call.objects.find(served, obj["metadata"].get("namespace", ""), name)
    if existing is not None:
        raise KubeError(
            409, "AlreadyExists", _exists_message(served, name), details=_details(served, name)
        )
    if served.kind == "Service":
        await lifecycle.assign_cluster_ip(call.objects, obj, dry_run=call.dry_run)
    try:
        created = await call.objects.create(served, obj, dry_run=call.dry_run)
    except Conflict:
        raise KubeError(
            409, "AlreadyExists", _exists_message(served, name), details=_details(served, name)
        ) from None
    if not call.dry_run:
        await lifecycle.after_create(call.objects, served, created)
        await _run(call, served, created)
    return _json(created, 201)


async def _run(call: Call, served: Served, obj: dict[str, Any], *, gone: bool = False) -> None:
    """What runs follows what was written: a Deployment's App, a namespace's environment."""
    meta = obj["metadata"]
    if served.kind == "Deployment":
        await mirror.sync_deployment(call.svc, call.objects, meta["namespace"], meta["name"])
    elif served.kind in ("Service", "ConfigMap", "Secret"):  # what Deployments refer to
        await mirror.sync_services(call.svc, call.objects, meta["namespace"])
    elif served.kind == "Pod":  # a bare Pod runs as a one-replica App (kube.barepods)
        await barepods.sync(call.svc, call.objects, meta["namespace"], meta["name"])
    elif served.kind == "Namespace" and gone:
        await mirror.delete_namespace_apps(call.svc, call.objects, meta["name"])
    elif served.kind in ("Job", "CronJob"):
        await jobsync.sync(call.svc, call.objects, served, meta["namespace"], meta["name"])


def _check_runnable(call: Call, served: Served, obj: dict[str, Any]) -> None:
    if served.kind == "Pod" and barepods.is_bare(obj):
        barepods.check_runnable(obj)
    if served.kind in ("Job", "CronJob"):
        jobs.check_runnable(obj)
    if served.kind != "Deployment":
        return
    workloads.check_runnable(obj)
    env = workloads.environment_name(call.cluster, obj["metadata"].get("namespace", ""))
    name = workloads.app_name(obj["metadata"]["name"])
    if len(env) > 63 or len(name) > 63:
        raise invalid(
            "Deployment",
            obj["metadata"]["name"],
            [("metadata.name", "cluster, namespace and name must each fit a DNS label to run")],
            "apps",
        )


async def _quota_used(call: Call) -> Counter[str]:
    counted: list[tuple[str, dict[str, Any]]] = []
    for kind in quota.COUNTED:
        served = by_kind("apps/v1" if kind == "Deployment" else "v1", kind)
        assert served is not None
        items, _ = await call.objects.list(served, None)
        counted.extend((kind, item) for item in items)
    return quota.used(counted)


async def _check_quota(
    call: Call, served: Served, obj: dict[str, Any], old: dict[str, Any] | None
) -> None:
    """403 ``exceeded quota`` for a write that takes the cluster past ``spec.quota``."""
    bounds = quota.hard(call.spec.get("quota"))
    if not bounds or served.kind not in quota.COUNTED:
        return
    plural = f"{served.plural}.{served.group}" if served.group else served.plural
    what = f'{plural} "{obj["metadata"]["name"]}"'
    quota.check(bounds, what, served.kind, obj, old, await _quota_used(call))


def _exists_message(served: Served, name: str) -> str:
    what = f"{served.plural}.{served.group}" if served.group else served.plural
    return f'{what} "{name}" already exists'


def _details(served: Served, name: str) -> dict[str, Any]:
    return {"name": name, "group": served.group, "kind": served.plural}


async def _write(
    call: Call,
    target: Target,
    current: dict[str, Any],
    obj: dict[str, Any],
    expected: str | None,
) -> dict[str, Any]:
    served = target.served
    assert target.name is not None
    if target.sub == "status":
        status = obj.get("status") or {}
        return await call.objects.update_status(
            served, target.namespace or "", target.name, status, expected_version=expected
        )
    lifecycle.keep_immutable(served, current, obj)
    _check_runnable(call, served, obj)
    await _check_quota(call, served, obj, current)
    obj = await _admit(call, served, Operation.UPDATE, obj, current) or obj
    try:
        written = await call.objects.update(
            served, obj, expected_version=expected, dry_run=call.dry_run
        )
        if not call.dry_run:
            await _run(call, served, written)
        return written
    except NotFound:
        raise not_found(served.plural, target.name, served.group) from None
    except KledError as e:
        raise from_kled(e, served.plural, target.name, served.group) from None


async def _update(call: Call, target: Target) -> Response:
    current = await _find(call, target)
    body = await _body(call)
    if target.sub == "status":
        if not isinstance(body, dict):
            raise bad_request("the body must be one object")
        return _json(await _write(call, target, current, body, None))
    obj = _prepare(call, target, body)
    expected = obj["metadata"].get("resourceVersion")
    return _json(await _write(call, target, current, obj, expected))


async def _patch(call: Call, target: Target) -> Response:
    assert target.name is not None
    ctype = call.request.headers.get("content-type", "").split(";")[0].strip()
    patch = await _body(call)
    if ctype == "application/apply-patch+yaml":
        return await _apply(call, target, patch)
    for attempt in range(PATCH_TRIES):
        current = await _find(call, target)
        base = {k: v for k, v in current.items() if target.sub == "status" or k != "status"}
        if ctype == "application/json-patch+json":
            patched = patching.json_patch(base, patch)
        elif ctype == "application/merge-patch+json":
            patched = patching.merge_patch(base, patch)
        elif ctype == "application/strategic-merge-patch+json":
            patched = patching.strategic_merge(base, patch)
        else:
            raise KubeError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {ctype}",
            )
        if target.sub == "status":
            return _json(await _write(call, target, current, patched, None))
        obj = _prepare(call, target, patched)
        try:
            return _json(
                await _write(call, target, current, obj, current["metadata"]["resourceVersion"])
            )
        except KubeError as e:
            if e.code != 409 or attempt == PATCH_TRIES - 1:
                raise
    raise AssertionError("unreachable")


async def _apply(call: Call, target: Target, patch: Any) -> Response:
    """Server-side apply, simplified: the applied configuration merged onto the object
    (strategic merge) or created; field managers are not tracked."""
    served = target.served
    if not call.query("fieldManager"):
        raise bad_request("PATCH of type application/apply-patch+yaml needs fieldManager")
    assert target.name is not None
    current = await call.objects.find(served, target.namespace or "", target.name)
    if current is None:
        obj = _prepare(call, target, patch)
        await _require_namespace(call, served, obj["metadata"].get("namespace"))
        lifecycle.before_create(served, obj)
        obj = await _admit(call, served, Operation.CREATE, obj, None) or obj
        if served.kind == "Service":
            await lifecycle.assign_cluster_ip(call.objects, obj, dry_run=call.dry_run)
        _check_runnable(call, served, obj)
        await _check_quota(call, served, obj, None)
        created = await call.objects.create(served, obj, dry_run=call.dry_run)
        if not call.dry_run:
            await lifecycle.after_create(call.objects, served, created)
            await _run(call, served, created)
        return _json(created, 201)
    base = {k: v for k, v in current.items() if k != "status"}
    obj = _prepare(call, target, patching.strategic_merge(base, patch))
    return _json(await _write(call, target, current, obj, None))


async def _delete(call: Call, target: Target) -> Response:
    served = target.served
    current = await _find(call, target)
    assert target.name is not None
    policy = deletion.policy(call.query("propagationPolicy"), await _body(call))
    await _admit(call, served, Operation.DELETE, None, current)
    if not call.dry_run:
        await deletion.before(call.svc, call.objects, served, current, policy)
    try:
        gone = await call.objects.delete(
            served, target.namespace or "", target.name, dry_run=call.dry_run
        )
    except NotFound:
        raise not_found(served.plural, target.name, served.group) from None
    if not call.dry_run:
        await lifecycle.after_delete(call.objects, served, gone)
        if deletion.cascades(served, policy):
            await _run(call, served, gone, gone=True)
    return _json(deletion.answer(gone, policy, served))


async def _delete_collection(call: Call, target: Target) -> Response:
    served = target.served
    items, revision = await call.objects.list(
        served,
        target.namespace,
        labels=selection.labels(call.query("labelSelector")),
        fields=selection.fields(call.query("fieldSelector")),
    )
    policy = deletion.policy(call.query("propagationPolicy"), await _body(call))
    gone = []
    for obj in items:
        meta = obj["metadata"]
        with contextlib.suppress(NotFound):
            await _admit(call, served, Operation.DELETE, None, obj)
            if not call.dry_run:
                await deletion.before(call.svc, call.objects, served, obj, policy)
            gone.append(
                await call.objects.delete(
                    served, meta.get("namespace", ""), meta["name"], dry_run=call.dry_run
                )
            )
            if not call.dry_run:
                await lifecycle.after_delete(call.objects, served, obj)
                if deletion.cascades(served, policy):
                    await _run(call, served, obj, gone=True)
    return _json(_list_body(served, gone, revision))


# ---- scale ------------------------------------------------------------------------------


def _scale_view(deployment: dict[str, Any]) -> dict[str, Any]:
    meta = deployment["metadata"]
    labels = deployment["spec"]["selector"].get("matchLabels") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta
        },
        "spec": {"replicas": deployment["spec"].get("replicas", 1)},
        "status": {
            "replicas": (deployment.get("status") or {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        },
    }


async def _scale(call: Call, target: Target, verb: str) -> Response:
    """``deployments/scale``, as ``kubectl scale`` reads and writes it."""
    current = await _find(call, target)
    if verb == "get":
        return _json(_scale_view(current))
    body = await _body(call)
    if verb == "patch":
        ctype = call.request.headers.get("content-type", "").split(";")[0].strip()
        view = _scale_view(current)
        if ctype == "application/json-patch+json":
            body = patching.json_patch(view, body)
        else:
            body = patching.merge_patch(view, body)
    replicas = (body.get("spec") or {}).get("replicas") if isinstance(body, dict) else None
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise invalid("Scale", str(target.name), [("spec.replicas", "must be an integer >= 0")])
    obj = {k: v for k, v in current.items() if k != "status"}
    obj["spec"] = {**obj["spec"], "replicas": replicas}
    written = await _write(call, Target(target.served, target.namespace, target.name, None),
                           current, obj, None)  # fmt: skip
    return _json(_scale_view(written))


# ---- logs -------------------------------------------------------------------------------


async def _logs(call: Call, target: Target) -> Response:
    """``kubectl logs``: the lines of the App replica a Deployment's Pod is, from the
    Message Office as ``kled logs`` reads them (``follow``, ``sinceSeconds``, ``tailLines``)."""
    pod = await _find(call, target)
    owners = pod["metadata"].get("ownerReferences") or []
    owner = next((o for o in owners if o.get("kind") == "Deployment"), None)
    hosts = getattr(call.request.app.state, "hosts", None)
    office = getattr(hosts, "office", None)
    # a Job's pod names the App of its attempt (replica 0)
    attempt = (pod["metadata"].get("annotations") or {}).get(jobs.APP_ANNOTATION)
    if (owner is None and attempt is None) or office is None:
        raise bad_request(f'pod "{target.name}" has no logs: it is not run by a Deployment')
    env = workloads.environment_name(call.cluster, target.namespace or "default")
    index = "0" if attempt else str(target.name).rsplit("-", 1)[-1]
    app = attempt or workloads.app_name(str((owner or {}).get("name")))
    prefix = f"{call.team}.{env}.{app}.{index}"
    container = containers.log_container(pod, call.query("container"))
    since = None
    if (call.query("sinceSeconds") or "").isdigit():
        since = datetime.now(UTC) - timedelta(seconds=int(call.query("sinceSeconds") or 0))
    follow = call.flag("follow")
    tail = int(call.query("tailLines") or -1) if (call.query("tailLines") or "").isdigit() else -1

    async def lines() -> AsyncIterator[bytes]:
        if follow or tail < 0:
            async for line in office.read_logs(prefix, since=since, follow=follow):
                if line.container == container:
                    yield (line.line.rstrip("\n") + "\n").encode()
            return
        kept: deque[str] = deque(maxlen=tail)
        async for line in office.read_logs(prefix, since=since, follow=False):
            if line.container == container:
                kept.append(line.line)
        for text in kept:
            yield (text.rstrip("\n") + "\n").encode()

    return StreamingResponse(lines(), media_type="text/plain")


# ---- endpoints --------------------------------------------------------------------------


async def _endpoints(call: Call, target: Target, verb: str) -> Response:
    """Endpoints and EndpointSlices, computed from Services and Pods (``endpoints``)."""
    served = target.served
    selector = call.query("labelSelector")
    if verb == "watch":
        since = await _watch_since(call, served)
        fields = selection.fields(call.query("fieldSelector"))  # kubectl get ep NAME -w
        initial: list[dict[str, Any]] = []
        seen = None  # what the client was sent: with a resourceVersion, unknown
        if since == 0:
            initial, since = await endpoints.views(call.objects, served, target.namespace, selector)
            seen = initial
        changes = endpoints.changes(call.objects, served, target.namespace, selector, since, seen)

        async def source() -> AsyncIterator[tuple[str, dict[str, Any], int]]:
            async for kind, obj, revision in changes:
                if kind == "BOOKMARK" or fields is None or fields(obj):
                    yield kind, obj, revision

        initial = [i for i in initial if fields is None or fields(i)]
        return _watch_stream(call, served, initial, source())
    items, revision = await endpoints.views(call.objects, served, target.namespace, selector)
    if verb == "get":
        items = [i for i in items if i["metadata"]["name"] == target.name]
        if not items:
            raise not_found(served.plural, target.name or "", served.group)
    as_table = tables.wants_table(call.request.headers.get("accept"))
    if as_table:
        return _json(tables.table(served, items, str(revision)))
    return _json(items[0] if verb == "get" else _list_body(served, items, revision))


# ---- nodes ------------------------------------------------------------------------------


async def _nodes(call: Call, target: Target, verb: str) -> Response:
    """A read-only view of the Kled nodes the cluster's ``spec.nodeSelector`` picks."""
    wanted = call.spec.get("nodeSelector") or {}
    page = await call.svc.store.list("Node")
    items = []
    for node in page.items:
        if nodes.shown(node, call.team, call.cluster, wanted):  # external nodes too
            items.append(_node_view(node))
    served = target.served
    if verb == "get":
        for item in items:
            if item["metadata"]["name"] == target.name:
                if tables.wants_table(call.request.headers.get("accept")):
                    return _json(tables.table(served, [item], str(page.revision)))
                return _json(item)
        raise not_found(served.plural, target.name or "", served.group)
    if verb == "watch":
        raise KubeError(405, "MethodNotAllowed", "watching nodes is not served yet")
    labels_match = selection.labels(call.query("labelSelector"))
    items = [i for i in items if labels_match is None or labels_match(i["metadata"]["labels"])]
    if tables.wants_table(call.request.headers.get("accept")):
        return _json(tables.table(served, items, str(page.revision)))
    return _json(_list_body(served, items, page.revision))


async def _quotas(call: Call, target: Target, verb: str) -> Response:
    """The cluster's ``spec.quota`` as one read-only ResourceQuota per namespace."""
    served = target.served
    bounds = quota.hard(call.spec.get("quota"))
    namespaces, revision = await call.objects.list(lifecycle.NAMESPACE, None)
    items: list[dict[str, Any]] = []
    if bounds:
        cluster = await call.svc.store.get(Key("Cluster", call.team, "", call.cluster))
        current = await _quota_used(call)
        for ns in namespaces:
            name = ns["metadata"]["name"]
            if target.namespace in (None, name):
                items.append(quota.view(bounds, current, name, cluster["metadata"]))
    if verb == "watch":
        raise KubeError(405, "MethodNotAllowed", "watching resourcequotas is not served yet")
    as_table = tables.wants_table(call.request.headers.get("accept"))
    if verb == "get":
        for item in items:
            if item["metadata"]["name"] == target.name:
                if as_table:
                    return _json(tables.table(served, [item], str(revision)))
                return _json(item)
        raise not_found(served.plural, target.name or "", served.group)
    if as_table:
        return _json(tables.table(served, items, str(revision)))
    return _json(_list_body(served, items, revision))


def _node_view(node: dict[str, Any]) -> dict[str, Any]:
    meta = node["metadata"]
    status = node.get("status") or {}
    ready = str(status.get("phase", "")).lower() in ("ready", "running")
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": meta["name"],
            "uid": meta.get("uid"),
            "resourceVersion": str(meta.get("resourceVersion", "")),
            "creationTimestamp": meta.get("creationTimestamp"),
            "labels": dict(meta.get("labels") or {}),
        },
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "nodeInfo": {"kubeletVersion": "v1.30.0+kled", "operatingSystem": "linux"},
        },
    }


# ---- kubeconfig tokens ------------------------------------------------------------------


async def _issue_token(call: Call) -> Response:
    """A token for this cluster only, for the caller or (for an admin) a listed user."""
    body = await _body(call)
    wanted = (body or {}).get("user") if isinstance(body, dict) else None
    user = str(wanted or call.caller.name)
    if user != call.caller.name and call.caller.role != "cluster-admin":
        raise KubeError(403, "Forbidden", "only a cluster-admin may issue tokens for others")
    holder = user
    role: str | None
    if call.caller.user.server_admin and not wanted:
        holder, role = "", "cluster-admin"
    elif user != call.caller.name or call.caller.user.server_admin:
        member = await call.svc.store.find(Key("User", call.team, "", user))
        if member is None:
            raise KubeError(404, "NotFound", f'user "{user}" not found in team {call.team}')
        target_user = UserInfo(
            username=user, team=call.team, role=(member.get("spec") or {}).get("role")
        )
        role = access.role_of(target_user, call.spec)
    else:
        role = call.caller.role
    if role is None:
        raise KubeError(
            403,
            "Forbidden",
            f"user {user} has no role in cluster {call.cluster}: add it to spec.users",
        )
    name = f"{call.cluster}:{user}:{secrets.token_hex(4)}"
    token = await call.svc.credentials.issue(
        purpose=access.KUBE_PURPOSE, team=call.team, name=name, username=holder
    )
    listener = getattr(call.request.app.state, "kube", None)
    answer: dict[str, Any] = {"user": user, "role": role, "token": token, "name": name}
    if listener is not None:
        # the listener's own address when it has one (its certificate names it); else the
        # name the client used, or loopback for a client on the Unix socket
        host = listener.host
        if host in ("0.0.0.0", "::", ""):
            host = call.request.url.hostname or "127.0.0.1"
            if call.request.scope.get("client") is None or host in ("kled", "localhost"):
                host = "127.0.0.1"
        shown = f"[{host}]" if ":" in host else host
        answer["server"] = f"https://{shown}:{listener.port}{call.prefix}"
        answer["certificateAuthorityData"] = base64.b64encode(listener.ca_pem).decode()
    return _json(answer, 201)


__all__ = ["router", "status_body", "unwrap"]
