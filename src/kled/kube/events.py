"""Events of a Kled Cluster's pods, as the scheduler and the kubelet would write them.

The mirror (``kled.kube.mirror``) sees a pod placed, started and stopped as the App's
replicas change, and records each as a ``v1`` Event of the pod's namespace — ``Scheduled``
(``Successfully assigned ns/pod to node``), ``Started`` (``Started container c``) and
``Killing`` (``Stopping container c``), and a Warning ``BackOff`` (``Back-off pulling image
"x"``) when it starts waiting for its image — so ``kubectl describe pod`` and ``kubectl get
events`` show what happened. Events are ordinary objects of the cluster: they go with
their namespace.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from kled.errors import Conflict
from kled.kube.objects import ClusterObjects
from kled.kube.served import by_kind

EVENT = by_kind("v1", "Event")
PULL_BACKOFF = "ImagePullBackOff"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_event(
    pod: dict[str, Any], reason: str, message: str, component: str, kind: str = "Normal"
) -> dict[str, Any]:
    meta = pod["metadata"]
    now = _now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta['name']}.{secrets.token_hex(8)}",
            "namespace": meta.get("namespace", "default"),
        },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": meta.get("namespace", "default"),
            "name": meta["name"],
            "uid": meta.get("uid", ""),
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": component}
        | ({"host": pod["spec"]["nodeName"]} if pod["spec"].get("nodeName") else {}),
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def _container(pod: dict[str, Any]) -> str:
    containers = pod["spec"].get("containers") or [{}]
    return str(containers[0].get("name", ""))


def _running(pod: dict[str, Any] | None) -> bool:
    return pod is not None and (pod.get("status") or {}).get("phase") == "Running"


def _waiting_for_image(pod: dict[str, Any] | None) -> bool:
    for container in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if ((container.get("state") or {}).get("waiting") or {}).get("reason") == PULL_BACKOFF:
            return True
    return False


def lifecycle(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The Events of a pod going from ``before`` to ``after`` (None: absent)."""
    out: list[dict[str, Any]] = []
    if after is not None:
        node = after["spec"].get("nodeName")
        if node and (before is None or not before["spec"].get("nodeName")):
            ns, name = after["metadata"].get("namespace", "default"), after["metadata"]["name"]
            message = f"Successfully assigned {ns}/{name} to {node}"
            out.append(pod_event(after, "Scheduled", message, "default-scheduler"))
        if _waiting_for_image(after) and not _waiting_for_image(before):
            image = (after["spec"].get("containers") or [{}])[0].get("image", "")
            message = f'Back-off pulling image "{image}"'
            out.append(pod_event(after, "BackOff", message, "kubelet", "Warning"))
        if _running(after) and not _running(before):
            message = f"Started container {_container(after)}"
            out.append(pod_event(after, "Started", message, "kubelet"))
    elif before is not None:
        message = f"Stopping container {_container(before)}"
        out.append(pod_event(before, "Killing", message, "kubelet"))
    return out


async def record(objects: ClusterObjects, events: list[dict[str, Any]]) -> None:
    assert EVENT is not None
    for event in events:
        try:
            await objects.create(EVENT, event)
        except Conflict:  # a name drawn twice: the event is lost, nothing else
            continue
