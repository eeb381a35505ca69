"""Endpoints and EndpointSlices: read-only views computed from Services and their Pods.

Kubernetes' endpoints controller writes, for each Service with a selector, the addresses
of the pods it picks (ready ones in ``addresses``, the others in ``notReadyAddresses``)
and the ports the Service's ``targetPort`` names on them. Here the same is computed at
each read from the namespace's Services and Pods (whose ready state and pod IP the
workload mirror keeps from the Apps' replicas), so ``kubectl get endpoints`` and
``kubectl describe svc`` show what the gateways route to. A Service without a selector
has none (Kubernetes leaves those to the user; writing them is not served). Watching
them is not served.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from kled.kube.objects import ClusterObjects
from kled.kube.selection import labels as label_selector
from kled.kube.served import Served, by_kind

SERVICE = by_kind("v1", "Service")
POD = by_kind("v1", "Pod")
SERVICE_NAME = "kubernetes.io/service-name"


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _target_port(port: dict[str, Any], pod: dict[str, Any]) -> int | None:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    for container in (pod.get("spec") or {}).get("containers") or []:
        for declared in container.get("ports") or []:
            if declared.get("name") == target:
                return int(declared["containerPort"])
    return None  # a name no container declares: the pod is no endpoint of this port


def _picked(service: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    selector = (service.get("spec") or {}).get("selector") or {}
    if not selector:
        return []
    return [
        p
        for p in pods
        if (p.get("status") or {}).get("podIP")
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
    ]


def _ports(service: dict[str, Any], pod: dict[str, Any]) -> tuple[tuple[str, int, str], ...]:
    out = []
    for port in (service.get("spec") or {}).get("ports") or []:
        number = _target_port(port, pod)
        if number is not None:
            out.append((str(port.get("name") or ""), number, str(port.get("protocol", "TCP"))))
    return tuple(out)


def _uid(kind: str, service: dict[str, Any]) -> str:
    digest = hashlib.sha256(f"{kind}/{service['metadata'].get('uid')}".encode()).hexdigest()
    return str(uuid.UUID(digest[:32]))


def _address(pod: dict[str, Any]) -> dict[str, Any]:
    meta = pod["metadata"]
    found: dict[str, Any] = {
        "ip": pod["status"]["podIP"],
        "targetRef": {
            "kind": "Pod",
            "namespace": meta.get("namespace"),
            "name": meta["name"],
            "uid": meta.get("uid", ""),
        },
    }
    if (pod.get("spec") or {}).get("nodeName"):
        found["nodeName"] = pod["spec"]["nodeName"]
    return found


def _port(name: str, number: int, protocol: str) -> dict[str, Any]:
    return {"port": number, "protocol": protocol} | ({"name": name} if name else {})


def endpoints(service: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The Endpoints of ``service`` among ``pods`` (one subset per set of ports)."""
    meta = service["metadata"]
    subsets: dict[tuple[tuple[str, int, str], ...], dict[str, list[dict[str, Any]]]] = {}
    for pod in _picked(service, pods):
        ports = _ports(service, pod)
        if not ports:
            continue
        group = subsets.setdefault(ports, {"addresses": [], "notReadyAddresses": []})
        group["addresses" if _ready(pod) else "notReadyAddresses"].append(_address(pod))
    shown = []
    for ports, addresses in subsets.items():
        subset: dict[str, Any] = {k: v for k, v in addresses.items() if v}
        subset["ports"] = [_port(*p) for p in ports]
        shown.append(subset)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace", "default"),
            "uid": _uid("Endpoints", service),
            "resourceVersion": meta.get("resourceVersion", ""),
            "creationTimestamp": meta.get("creationTimestamp"),
            "labels": dict(meta.get("labels") or {}),
        },
    }
    if shown:
        body["subsets"] = shown
    return body


def slice_of(service: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The one EndpointSlice of ``service`` (``discovery.k8s.io/v1``)."""
    meta = service["metadata"]
    picked = _picked(service, pods)
    ports = next((p for p in (_ports(service, pod) for pod in picked) if p), ())
    suffix = _uid("EndpointSlice", service).replace("-", "")[:5]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{meta['name'][:57]}-{suffix}",
            "namespace": meta.get("namespace", "default"),
            "uid": _uid("EndpointSlice", service),
            "resourceVersion": meta.get("resourceVersion", ""),
            "creationTimestamp": meta.get("creationTimestamp"),
            "generateName": f"{meta['name']}-",
            "labels": {
                **(meta.get("labels") or {}),
                SERVICE_NAME: meta["name"],
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": meta["name"],
                    "uid": meta.get("uid", ""),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": _ready(pod), "serving": _ready(pod), "terminating": False},
                "targetRef": _address(pod)["targetRef"],
            }
            | ({"nodeName": pod["spec"]["nodeName"]} if pod["spec"].get("nodeName") else {})
            for pod in picked
            if _ports(service, pod) == ports
        ],
        "ports": [_port(*p) for p in ports],
    }


async def views(
    objects: ClusterObjects, served: Served, namespace: str | None, selector: str | None
) -> tuple[list[dict[str, Any]], int]:
    """Every Endpoints (or EndpointSlice) of the namespace (None: of the cluster)."""
    assert SERVICE is not None and POD is not None
    services, revision = await objects.list(SERVICE, namespace)
    pods, _ = await objects.list(POD, namespace)
    out = []
    for service in services:
        if not (service.get("spec") or {}).get("selector"):
            continue
        ns = service["metadata"].get("namespace")
        mine = [p for p in pods if p["metadata"].get("namespace") == ns]
        if served.kind == "Endpoints":
            out.append(endpoints(service, mine))
        else:
            out.append(slice_of(service, mine))
    matches = label_selector(selector)
    if matches is not None:
        out = [o for o in out if matches(o["metadata"].get("labels") or {})]
    return out, revision


def _identity(view: dict[str, Any]) -> tuple[str, str]:
    meta = view["metadata"]
    return meta.get("namespace") or "", meta["name"]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two views say the same, apart from their resourceVersion."""

    def bare(view: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in view["metadata"].items() if k != "resourceVersion"}
        return {**view, "metadata": meta}

    return bare(a) == bare(b)


async def changes(
    objects: ClusterObjects,
    served: Served,
    namespace: str | None,
    selector: str | None,
    since: int,
    seen: list[dict[str, Any]] | None = None,
) -> AsyncIterator[tuple[str, dict[str, Any], int]]:
    """A watch of the Endpoints (or EndpointSlices) of the namespace: each view that
    appears, changes or goes after revision ``since``, as (type, object, revision), and
    ``("BOOKMARK", {}, revision)`` when idle.

    The views are computed, never stored, so there is no history of them: what the
    client saw at ``since`` is ``seen`` (the list it was sent), else taken to be what they
    are when the watch begins, and each read of the event log that finds changes to the
    cluster's Services or Pods recomputes them once and sends the difference (the
    object's resourceVersion is the revision of the last change read)."""
    assert SERVICE is not None and POD is not None
    if seen is None:
        seen = (await views(objects, served, namespace, selector))[0]
    shown = {_identity(v): copy.deepcopy(v) for v in seen}
    async for found, last in objects.batches(since, (SERVICE, POD)):
        if not found:
            yield "BOOKMARK", {}, last
            continue
        revision = found[-1].revision  # a burst of changes: the views made once
        now = {_identity(v): v for v in (await views(objects, served, namespace, selector))[0]}
        for key, view in now.items():
            before = shown.get(key)
            if before is None or not _same(before, view):
                view["metadata"]["resourceVersion"] = str(revision)
                yield ("ADDED" if before is None else "MODIFIED"), view, revision
        for key in shown.keys() - now.keys():
            gone = shown[key]
            gone["metadata"]["resourceVersion"] = str(revision)
            yield "DELETED", gone, revision
        shown = now
