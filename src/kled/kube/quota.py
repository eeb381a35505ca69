"""A Kled Cluster's ``spec.quota``, enforced when objects are written, and its view as a
ResourceQuota.

The quota is the cluster's, over all its namespaces: the CPU, memory and GPUs its pods ask
for (``requests``, or ``limits`` where a container gives only those, as Kubernetes
defaults them), its pods and its Services. A Deployment counts as its replicas, a Pod that
no Deployment owns as one pod; a Deployment's own pods are counted once, through it. A
write that would take a resource past its bound is refused before it is stored, in
Kubernetes' words: ``403 Forbidden``, ``deployments.apps "web" is forbidden: exceeded
quota: cluster-quota, requested: pods=3, used: pods=2, limited: pods=4``. With a CPU or
memory bound, a pod that asks for none is refused too (``failed quota: …: must specify
cpu``), as Kubernetes does. Each namespace shows the quota as one read-only
ResourceQuota, ``cluster-quota``, whose ``used`` is the cluster's.

Pure functions of documents; ``routes`` reads the objects and calls them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from kled.errors import InvalidInput
from kled.kube.status import KubeError
from kled.resources.quantities import format_cpu, format_memory, parse_cpu, parse_memory

QUOTA_NAME = "cluster-quota"
GPU = "requests.nvidia.com/gpu"
#: ``spec.quota`` field → the ResourceQuota's resource name
RESOURCES = {"cpu": "cpu", "memory": "memory", "gpu": GPU, "pods": "pods", "services": "services"}
#: the kinds whose objects use some of the quota
COUNTED = ("Deployment", "Pod", "Service")


def hard(quota: Mapping[str, Any] | None) -> dict[str, int]:
    """The bounds, by resource name: millicores, bytes, counts."""
    out: dict[str, int] = {}
    for field, resource in RESOURCES.items():
        value = (quota or {}).get(field)
        if value is None:
            continue
        if field == "cpu":
            out[resource] = parse_cpu(value)
        elif field == "memory":
            out[resource] = parse_memory(value)
        else:
            out[resource] = int(value)
    return out


def _container_requests(container: Mapping[str, Any]) -> tuple[dict[str, int], set[str]]:
    """What one container asks for, and which of cpu/memory it leaves unsaid."""
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    out: dict[str, int] = {}
    missing: set[str] = set()
    for name, parse in (("cpu", parse_cpu), ("memory", parse_memory)):
        value = requests.get(name, limits.get(name))
        if value is None:
            missing.add(name)
            continue
        try:
            out[name] = parse(value)
        except InvalidInput:
            missing.add(name)
    gpus = requests.get("nvidia.com/gpu", limits.get("nvidia.com/gpu"))
    if gpus is not None and str(gpus).isdigit():
        out[GPU] = int(str(gpus))
    return out, missing


def _pod_requests(pod_spec: Mapping[str, Any]) -> tuple[Counter[str], set[str]]:
    total: Counter[str] = Counter()
    missing: set[str] = set()
    for container in pod_spec.get("containers") or []:
        asked, unsaid = _container_requests(container)
        total.update(asked)
        missing |= unsaid
    return total, missing


def _owned_by_deployment(pod: Mapping[str, Any]) -> bool:
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("kind") == "Deployment" for o in owners)


def usage(kind: str, obj: Mapping[str, Any] | None) -> tuple[Counter[str], set[str]]:
    """What one object uses of the quota, and the requests its pods leave unsaid."""
    if obj is None:
        return Counter(), set()
    spec = obj.get("spec") or {}
    if kind == "Service":
        return Counter(services=1), set()
    if kind == "Pod":
        phase = (obj.get("status") or {}).get("phase")
        if _owned_by_deployment(obj) or phase in ("Succeeded", "Failed"):
            return Counter(), set()
        asked, missing = _pod_requests(spec)
        asked["pods"] += 1
        return asked, missing
    if kind == "Deployment":
        replicas = int(spec.get("replicas", 1))
        per_pod, missing = _pod_requests((spec.get("template") or {}).get("spec") or {})
        total: Counter[str] = Counter({k: v * replicas for k, v in per_pod.items()})
        total["pods"] += replicas
        return total, missing if replicas else set()
    return Counter(), set()


def used(objects: Iterable[tuple[str, Mapping[str, Any]]]) -> Counter[str]:
    """The cluster's use of the quota: ``objects`` are (kind, object) of ``COUNTED``."""
    total: Counter[str] = Counter()
    for kind, obj in objects:
        total.update(usage(kind, obj)[0])
    return total


def quantity(resource: str, value: int) -> str:
    if resource == "cpu":
        return format_cpu(value)
    if resource == "memory":
        return format_memory(value)
    return str(value)


def _pairs(values: Mapping[str, int], resources: list[str]) -> str:
    return ",".join(f"{r}={quantity(r, values.get(r, 0))}" for r in resources)


def check(
    bounds: Mapping[str, int],
    what: str,
    kind: str,
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    current: Counter[str],
) -> None:
    """Refuse (403) writing ``obj`` over ``old`` when it takes the cluster past ``bounds``;
    ``what`` is the object as Kubernetes names it (``deployments.apps "web"``)."""
    if not bounds:
        return
    new_use, missing = usage(kind, obj)
    old_use, _ = usage(kind, old)
    unsaid = sorted(r for r in missing if r in bounds)
    if unsaid:
        raise KubeError(
            403,
            "Forbidden",
            f"{what} is forbidden: failed quota: {QUOTA_NAME}: must specify {','.join(unsaid)}",
        )
    requested = {r: new_use[r] - old_use[r] for r in bounds if new_use[r] - old_use[r] > 0}
    over = sorted(r for r, more in requested.items() if current[r] + more > bounds[r])
    if over:
        raise KubeError(
            403,
            "Forbidden",
            f"{what} is forbidden: exceeded quota: {QUOTA_NAME}, "
            f"requested: {_pairs(requested, over)}, used: {_pairs(current, over)}, "
            f"limited: {_pairs(bounds, over)}",
        )


def view(
    bounds: Mapping[str, int], current: Counter[str], namespace: str, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The read-only ResourceQuota of ``namespace``; ``meta`` is the Cluster document's."""
    shown_hard = {r: quantity(r, v) for r, v in sorted(bounds.items())}
    shown_used = {r: quantity(r, current.get(r, 0)) for r in sorted(bounds)}
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": QUOTA_NAME,
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": str(meta.get("resourceVersion", "")),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"hard": shown_hard},
        "status": {"hard": shown_hard, "used": shown_used},
    }
