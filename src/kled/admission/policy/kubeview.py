"""Policies on a Kled Cluster's Kubernetes objects, seen as Kubernetes shows them.

A write to a cluster's object carries a ``KubeRequest`` (``kled.admission.kube``). A
policy that names the Kubernetes resource or kind (``resources: [deployments]``,
``kinds: [Deployment]``, ``apiGroups``, ``namespaces``) or every kind (``*``) sees the
write as a Kubernetes admission webhook would: ``request.object`` is the Deployment,
``request.namespace`` its namespace, ``request.kind`` ``{group: apps, version: v1, kind:
Deployment}``; its ``mutate(obj)`` changes the Deployment, and ``get``/``list`` read the
cluster's objects (``list("Pod", "v1", {namespace})``). A policy that names
``KubeObject`` sees the stored document instead, as before.
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
from collections.abc import Mapping
from typing import Any

from kled.admission.kube import KubeReader, KubeRequest
from kled.admission.policy.matching import PolicyDef, Selector, labels_of
from kled.admission.request import AdmissionRequest
from kled.errors import KledError

WRAPPER = "KubeObject"


def sees_kube(policy: PolicyDef, req: AdmissionRequest) -> bool:
    """Whether ``policy`` sees ``req`` as the Kubernetes object (not the stored document)."""
    return req.kube is not None and not (policy.kinds is not None and WRAPPER in policy.kinds)


def kube_matches(policy: PolicyDef, kube: KubeRequest) -> bool:
    """Resources or kinds, API groups, namespaces and both selectors, as jsPolicy has them."""
    if policy.kube_resources is not None and kube.resource not in policy.kube_resources:
        return False
    if policy.api_groups is not None and kube.group not in policy.api_groups:
        return False
    if policy.namespaces and not any(
        fnmatch.fnmatchcase(kube.namespace, p) for p in policy.namespaces
    ):
        return False
    if policy.object_selector is not None:
        candidates = [d for d in (kube.object, kube.old_object) if d is not None] or [{}]
        if not any(policy.object_selector.matches(labels_of(d)) for d in candidates):
            return False
    if policy.namespace_selector is not None and (kube.namespace or kube.kind == "Namespace"):
        # a Namespace is matched on its own labels, as Kubernetes does
        return policy.namespace_selector.matches(kube.namespace_labels)
    return True


def kube_document(req: AdmissionRequest) -> dict[str, Any]:
    """``request`` for a script, as a Kubernetes AdmissionRequest of the object itself."""
    kube = req.kube
    assert kube is not None
    kind = {"group": kube.group, "version": kube.version, "kind": kube.kind}
    resource = {"group": kube.group, "version": kube.version, "resource": kube.resource}
    return {
        "uid": req.uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": kube.name,
        "namespace": kube.namespace,
        "team": req.team,
        "cluster": kube.cluster,
        "operation": req.operation.value,
        "userInfo": req.user.as_dict(),
        "object": copy.deepcopy(kube.object),
        "oldObject": copy.deepcopy(kube.old_object),
        "dryRun": req.dry_run,
    }


async def answer_kube(
    reader: KubeReader | None,
    need: Mapping[str, Any],
    request: Mapping[str, Any],
    deadline: float,
) -> dict[str, Any]:
    """A script's ``get``/``list``/``sleep`` answered from the cluster's own objects."""
    remaining = max(0.0, deadline - asyncio.get_running_loop().time())
    fn, args = str(need.get("fn")), list(need.get("args") or [])
    try:
        if fn == "sleep":
            await asyncio.sleep(min(max(0.0, float(args[0]) / 1000), remaining))
            return {"value": None}
        if reader is None:
            return {"value": None if fn == "get" else []}
        kind, api_version = str(args[0]), str(args[1] or "")
        if fn == "get":
            namespace, _, name = str(args[2]).rpartition("/")
            namespace = namespace or str(request.get("namespace") or "")
            found = reader.get(kind, api_version, namespace, name)
            return {"value": await asyncio.wait_for(found, remaining)}
        if fn == "list":
            within = str(args[2]) if args[2] else None
            selector = str(args[3]) if args[3] else None
            items = await asyncio.wait_for(
                reader.list(kind, api_version, within, selector), remaining
            )
            wanted = Selector.parse(selector)
            return {"value": [i for i in items if wanted.matches(labels_of(i))]}
        return {"error": f"unknown host call {fn}"}
    except TimeoutError:
        return {"error": f"{fn}() ran out of the policy's time"}
    except KledError as exc:
        return {"error": f"{fn}(): {exc}"}
