"""A Deployment's revisions as ReplicaSets, for ``kubectl rollout history`` and ``undo``.

The App of a Deployment does the rolling (``kled.control.rollout``); what Kubernetes
clients read a rollout's history from is the Deployment's ReplicaSets, so each pod template
a Deployment has had is kept as one read-only ReplicaSet, ``<deployment>-<template hash>``
(the hash its Pods are named with), controlled by the Deployment, with the revision number
in ``deployment.kubernetes.io/revision`` and the template the Deployment then had. A new
template is the next number; going back to an earlier one (``kubectl rollout undo``
patches the Deployment's template with the ReplicaSet's) renumbers that ReplicaSet, as
Kubernetes does. The newest ReplicaSet wants the Deployment's replicas, the others none;
``spec.revisionHistoryLimit`` (10) old ones are kept. They go with their Deployment.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from kled.errors import Conflict, NotFound
from kled.kube import workloads
from kled.kube.objects import ClusterObjects
from kled.kube.served import by_kind

REPLICA_SET = by_kind("apps/v1", "ReplicaSet")
DEPLOYMENT = by_kind("apps/v1", "Deployment")
REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
CHANGE_CAUSE = "kubernetes.io/change-cause"
DEFAULT_LIMIT = 10


def revision_of(obj: dict[str, Any]) -> int:
    text = str((obj["metadata"].get("annotations") or {}).get(REVISION, "0"))
    return int(text) if text.isdigit() else 0


def owned(deployment: dict[str, Any], sets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ReplicaSets ``deployment`` controls, oldest revision first."""
    name = deployment["metadata"]["name"]
    mine = [
        rs
        for rs in sets
        if any(
            o.get("kind") == "Deployment" and o.get("name") == name
            for o in rs["metadata"].get("ownerReferences") or []
        )
    ]
    return sorted(mine, key=revision_of)


def replica_set(deployment: dict[str, Any], revision: int, current: bool) -> dict[str, Any]:
    """The ReplicaSet of the Deployment's present template, as revision ``revision``."""
    meta = deployment["metadata"]
    spec = deployment["spec"]
    digest = workloads.template_hash(deployment)
    template = copy.deepcopy(spec["template"])
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    selector = copy.deepcopy(spec.get("selector") or {})
    selector.setdefault("matchLabels", {})[HASH_LABEL] = digest
    given = meta.get("annotations") or {}
    cause = {CHANGE_CAUSE: given[CHANGE_CAUSE]} if CHANGE_CAUSE in given else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{meta['name']}-{digest}",
            "namespace": meta.get("namespace", "default"),
            "labels": {**labels, HASH_LABEL: digest},
            "annotations": {REVISION: str(revision), **cause},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": meta["name"],
                    "uid": meta.get("uid", ""),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "replicas": int(spec.get("replicas", 1)) if current else 0,
            "selector": selector,
            "template": template,
        },
    }


def status(rs: dict[str, Any], deployment_status: dict[str, Any], current: bool) -> dict[str, Any]:
    if not current:
        return {"replicas": 0, "observedGeneration": 1}
    return {
        "replicas": int(deployment_status.get("replicas", 0)),
        "readyReplicas": int(deployment_status.get("readyReplicas", 0)),
        "availableReplicas": int(deployment_status.get("availableReplicas", 0)),
        "fullyLabeledReplicas": int(deployment_status.get("replicas", 0)),
        "observedGeneration": 1,
    }


async def sync(objects: ClusterObjects, namespace: str, name: str) -> None:
    """Keep the ReplicaSets of Deployment ``namespace/name`` (none when it is gone)."""
    assert REPLICA_SET is not None and DEPLOYMENT is not None
    deployment = await objects.find(DEPLOYMENT, namespace, name)
    every, _ = await objects.list(REPLICA_SET, namespace)
    if deployment is None:
        for rs in every:
            owners = rs["metadata"].get("ownerReferences") or []
            if any(o.get("kind") == "Deployment" and o.get("name") == name for o in owners):
                with contextlib.suppress(NotFound):
                    await objects.delete(REPLICA_SET, namespace, rs["metadata"]["name"])
        return
    mine = owned(deployment, every)
    newest = max((revision_of(rs) for rs in mine), default=0)
    wanted_name = f"{name}-{workloads.template_hash(deployment)}"
    present = next((rs for rs in mine if rs["metadata"]["name"] == wanted_name), None)
    number = newest if present is not None and revision_of(present) == newest else newest + 1
    number = max(number, 1)
    current = replica_set(deployment, number, True)
    dstatus = deployment.get("status") or {}
    with contextlib.suppress(Conflict, NotFound):
        if present is None:
            current["status"] = status(current, dstatus, True)
            await objects.create(REPLICA_SET, current)
        else:
            if present.get("spec") != current["spec"] or revision_of(present) != number:
                kept = {**current, "metadata": {**present["metadata"], **current["metadata"]}}
                await objects.update(REPLICA_SET, kept)
            if present.get("status") != status(current, dstatus, True):
                await objects.update_status(
                    REPLICA_SET, namespace, wanted_name, status(current, dstatus, True)
                )
    limit = int(deployment["spec"].get("revisionHistoryLimit", DEFAULT_LIMIT))
    old = [rs for rs in mine if rs["metadata"]["name"] != wanted_name]
    for index, rs in enumerate(old):
        rs_name = rs["metadata"]["name"]
        with contextlib.suppress(Conflict, NotFound):
            if index < len(old) - limit:
                await objects.delete(REPLICA_SET, namespace, rs_name)
                continue
            if rs["spec"].get("replicas") != 0:
                await objects.update(REPLICA_SET, {**rs, "spec": {**rs["spec"], "replicas": 0}})
            if rs.get("status") != status(rs, dstatus, False):
                await objects.update_status(REPLICA_SET, namespace, rs_name, status(rs, {}, False))
    annotations = dict(deployment["metadata"].get("annotations") or {})
    if annotations.get(REVISION) != str(number):
        annotations[REVISION] = str(number)
        with contextlib.suppress(Conflict, NotFound):
            written = await objects.update(
                DEPLOYMENT,
                {**deployment, "metadata": {**deployment["metadata"], "annotations": annotations}},
                expected_version=deployment["metadata"]["resourceVersion"],
            )
            # the annotation is the server's, not a new spec: the status has observed it
            if written.get("status"):
                observed = int(written["metadata"].get("generation", 1))
                await objects.update_status(
                    DEPLOYMENT,
                    namespace,
                    name,
                    {**written["status"], "observedGeneration": observed},
                    expected_version=written["metadata"]["resourceVersion"],
                )
