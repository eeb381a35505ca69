"""The Kled Environment that holds what a Kled Cluster runs in one namespace."""

from __future__ import annotations

import contextlib

from kled.api.service import ADMIN, Service
from kled.errors import Conflict
from kled.kube import workloads
from kled.kube.objects import ClusterObjects
from kled.store.objects import Key


async def ensure_environment(svc: Service, objects: ClusterObjects, namespace: str) -> None:
    """The cluster's environment for ``namespace``, made the first time something runs."""
    env = workloads.environment_name(objects.cluster, namespace)
    if await svc.store.find(Key("Environment", objects.team, "", env)) is not None:
        return
    doc = {
        "apiVersion": "kled.io/v1",
        "kind": "Environment",
        "metadata": {
            "name": env,
            "team": objects.team,
            "labels": {
                workloads.CLUSTER_LABEL: objects.cluster,
                workloads.NAMESPACE_LABEL: namespace,
            },
        },
        "spec": {},
    }
    with contextlib.suppress(Conflict):
        await svc.create(ADMIN, doc)
