"""What the Kubernetes control plane does around writes, done here at write time.

A new cluster has the namespaces ``default``, ``kube-system``, ``kube-public`` and
``kube-node-lease``; every namespace has a ``default`` ServiceAccount (the service-account
controller's job); deleting a namespace deletes what is in it (the namespace controller's);
a Service gets a ClusterIP from the team's service range (Kled's IPAM, the same one that
gives apps their service IPs) and gives it back when deleted.
"""

from __future__ import annotations

import contextlib
from typing import Any

from kled.control.ipam import Ipam
from kled.errors import Conflict
from kled.kube import jobs
from kled.kube.objects import ClusterObjects, served_of, store_name, unwrap
from kled.kube.served import Served, by_kind
from kled.store.objects import Key

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
IP_OWNER = "KubeService"


def _served(api_version: str, kind: str) -> Served:
    served = by_kind(api_version, kind)
    assert served is not None
    return served


NAMESPACE = _served("v1", "Namespace")
SERVICE_ACCOUNT = _served("v1", "ServiceAccount")
SERVICE = _served("v1", "Service")


def namespace_doc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


async def ensure_cluster(objects: ClusterObjects) -> None:
    """The namespaces every cluster starts with (idempotent, cheap when present)."""
    for name in SYSTEM_NAMESPACES:
        if await objects.find(NAMESPACE, "", name) is None:
            with contextlib.suppress(Conflict):
                await objects.create(NAMESPACE, namespace_doc(name))
            await ensure_service_account(objects, name)


async def ensure_service_account(objects: ClusterObjects, namespace: str) -> None:
    if await objects.find(SERVICE_ACCOUNT, namespace, "default") is None:
        doc = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": namespace},
        }
        with contextlib.suppress(Conflict):
            await objects.create(SERVICE_ACCOUNT, doc)


def before_create(served: Served, obj: dict[str, Any]) -> None:
    """Defaults of the system's part: a namespace is Active, a pod Pending."""
    if served.kind == "Namespace":
        meta = obj["metadata"]
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    elif served.kind == "Pod":
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif served.kind == "Deployment":
        obj["status"] = {"observedGeneration": 1}


async def assign_cluster_ip(objects: ClusterObjects, obj: dict[str, Any], *, dry_run: bool) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
        return
    if dry_run:
        spec.setdefault("clusterIP", "")
        spec.setdefault("clusterIPs", [spec["clusterIP"]] if spec["clusterIP"] else [])
    else:
        ipam = Ipam(objects.store.db)
        await ipam.ensure_team_block(objects.team)
        meta = obj["metadata"]
        owner = f"{objects.cluster}/{store_name(SERVICE, meta['namespace'], meta['name'])}"
        spec["clusterIP"] = await ipam.allocate(objects.team, "service", IP_OWNER, owner)
        spec["clusterIPs"] = [spec["clusterIP"]]
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")


def keep_immutable(served: Served, current: dict[str, Any], obj: dict[str, Any]) -> None:
    """Fields the system set that an update may leave out (a Service's clusterIP, a
    Job's selector)."""
    if served.kind == "Job":
        jobs.keep_selector(current, obj)
    if served.kind != "Service":
        return
    old = current.get("spec") or {}
    new = obj.setdefault("spec", {})
    for field in (
        "clusterIP",
        "clusterIPs",
        "ipFamilies",
        "ipFamilyPolicy",
        "internalTrafficPolicy",
    ):
        if field in old and not new.get(field):
            new[field] = old[field]


async def after_create(objects: ClusterObjects, served: Served, obj: dict[str, Any]) -> None:
    if served.kind == "Namespace":
        await ensure_service_account(objects, obj["metadata"]["name"])


async def after_delete(objects: ClusterObjects, served: Served, obj: dict[str, Any]) -> None:
    if served.kind == "Service":
        await release_ip(objects, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
    elif served.kind == "Namespace":
        name = obj["metadata"]["name"]
        for stored in await objects.everything():
            inner = unwrap(stored)
            kind = served_of(stored)
            if kind is None or not kind.namespaced or inner["metadata"].get("namespace") != name:
                continue
            with contextlib.suppress(Exception):
                await objects.store.delete(Key.of(stored))
            if kind.kind == "Service":
                await release_ip(objects, name, inner["metadata"]["name"])


async def release_ip(objects: ClusterObjects, namespace: str, name: str) -> None:
    owner = f"{objects.cluster}/{store_name(SERVICE, namespace, name)}"
    await Ipam(objects.store.db).release(objects.team, IP_OWNER, owner)
