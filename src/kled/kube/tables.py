"""Server-side printing: the ``Table`` kubectl asks for (``as=Table;g=meta.k8s.io``).

One row per object, with the columns ``kubectl get`` shows for each kind in Kubernetes;
each row carries the object's metadata (``PartialObjectMetadata``) as the API server does
by default, which kubectl uses for ``-A`` and ``-L``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kled.kube.served import Served

Cell = Callable[[dict[str, Any]], Any]


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """``5s``, ``3m``, ``2h``, ``4d`` as kubectl prints ages."""
    if not timestamp:
        return "<unknown>"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _age(obj: dict[str, Any]) -> str:
    return age(obj["metadata"].get("creationTimestamp"))


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("spec") or {}


def _ports(obj: dict[str, Any]) -> str:
    ports = _spec(obj).get("ports") or []
    shown = [f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports]
    return ",".join(shown) or "<none>"


def _pod_ready(obj: dict[str, Any]) -> str:
    containers = _spec(obj).get("containers") or []
    ready = sum(1 for c in _status(obj).get("containerStatuses") or [] if c.get("ready"))
    return f"{ready}/{len(containers)}"


def _pod_status(obj: dict[str, Any]) -> str:
    """The phase, or a container's waiting or terminated reason (``ImagePullBackOff``,
    ``Completed``, ``Error``), as kubectl prints a pod's status."""
    shown = str(_status(obj).get("reason") or _status(obj).get("phase") or "Pending")
    for container in _status(obj).get("containerStatuses") or []:
        state = container.get("state") or {}
        for key in ("waiting", "terminated"):
            if (state.get(key) or {}).get("reason"):
                shown = str(state[key]["reason"])
    return shown


def _restarts(obj: dict[str, Any]) -> int:
    return sum(int(c.get("restartCount", 0)) for c in _status(obj).get("containerStatuses") or [])


def _node_ready(obj: dict[str, Any]) -> str:
    for condition in _status(obj).get("conditions") or []:
        if condition.get("type") == "Ready":
            return "Ready" if condition.get("status") == "True" else "NotReady"
    return "Unknown"


def _quota_request(obj: dict[str, Any]) -> str:
    status = _status(obj)
    hard, used = status.get("hard") or {}, status.get("used") or {}
    return ", ".join(f"{r}: {used.get(r, '0')}/{hard[r]}" for r in sorted(hard))


def _endpoints(obj: dict[str, Any]) -> str:
    """``10.0.0.1:8080,10.0.0.2:8080 + 2 more...`` as kubectl prints Endpoints."""
    shown = [
        f"{a.get('ip')}:{p.get('port')}"
        for subset in obj.get("subsets") or []
        for p in subset.get("ports") or [{}]
        for a in subset.get("addresses") or []
    ]
    if not shown:
        return "<none>"
    more = f" + {len(shown) - 3} more..." if len(shown) > 3 else ""
    return ",".join(shown[:3]) + more


def _job_status(obj: dict[str, Any]) -> str:
    for condition in _status(obj).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return str(condition["type"])
    return "Suspended" if _spec(obj).get("suspend") else "Running"


def _duration(obj: dict[str, Any]) -> str:
    start = _status(obj).get("startTime")
    if not start:
        return ""
    end = _status(obj).get("completionTime")
    if end is None:
        return age(start)
    return age(start, datetime.fromisoformat(str(end).replace("Z", "+00:00")))


def _last_schedule(obj: dict[str, Any]) -> str:
    when = _status(obj).get("lastScheduleTime")
    return age(when) if when else "<none>"


Column = tuple[str, str, str, Cell]

_NAME: Column = ("Name", "string", "name", lambda o: o["metadata"]["name"])
_AGE: Column = ("Age", "string", "", _age)

COLUMNS: dict[str, list[Column]] = {
    "Namespace": [_NAME, ("Status", "string", "", lambda o: _status(o).get("phase", "")), _AGE],
    "ConfigMap": [_NAME, ("Data", "integer", "", lambda o: len(o.get("data") or {})), _AGE],
    "Secret": [
        _NAME,
        ("Type", "string", "", lambda o: o.get("type", "Opaque")),
        ("Data", "integer", "", lambda o: len(o.get("data") or {})),
        _AGE,
    ],
    "Service": [
        _NAME,
        ("Type", "string", "", lambda o: _spec(o).get("type", "ClusterIP")),
        ("Cluster-IP", "string", "", lambda o: _spec(o).get("clusterIP", "<none>")),
        ("External-IP", "string", "", lambda o: "<none>"),
        ("Port(s)", "string", "", _ports),
        _AGE,
    ],
    "Pod": [
        _NAME,
        ("Ready", "string", "", _pod_ready),
        ("Status", "string", "", _pod_status),
        ("Restarts", "string", "", lambda o: str(_restarts(o))),
        _AGE,
    ],
    "Deployment": [
        _NAME,
        (
            "Ready",
            "string",
            "",
            lambda o: f"{_status(o).get('readyReplicas', 0)}/{_spec(o).get('replicas', 1)}",
        ),
        ("Up-to-date", "integer", "", lambda o: _status(o).get("updatedReplicas", 0)),
        ("Available", "integer", "", lambda o: _status(o).get("availableReplicas", 0)),
        _AGE,
    ],
    "ServiceAccount": [
        _NAME,
        ("Secrets", "integer", "", lambda o: len(o.get("secrets") or [])),
        _AGE,
    ],
    "Event": [
        ("Last Seen", "string", "", lambda o: age(o.get("lastTimestamp"))),
        ("Type", "string", "", lambda o: o.get("type", "Normal")),
        ("Reason", "string", "", lambda o: o.get("reason", "")),
        (
            "Object",
            "string",
            "",
            lambda o: "{}/{}".format(
                str((o.get("involvedObject") or {}).get("kind", "")).lower(),
                (o.get("involvedObject") or {}).get("name", ""),
            ),
        ),
        ("Message", "string", "", lambda o: o.get("message", "")),
    ],
    "ReplicaSet": [
        _NAME,
        ("Desired", "integer", "", lambda o: _spec(o).get("replicas", 0)),
        ("Current", "integer", "", lambda o: _status(o).get("replicas", 0)),
        ("Ready", "integer", "", lambda o: _status(o).get("readyReplicas", 0)),
        _AGE,
    ],
    "ResourceQuota": [
        _NAME,
        _AGE,
        ("Request", "string", "", _quota_request),
        ("Limit", "string", "", lambda o: ""),
    ],
    "Endpoints": [_NAME, ("Endpoints", "string", "", _endpoints), _AGE],
    "EndpointSlice": [
        _NAME,
        ("AddressType", "string", "", lambda o: o.get("addressType", "IPv4")),
        (
            "Ports",
            "string",
            "",
            lambda o: ",".join(str(p.get("port")) for p in o.get("ports") or []) or "<unset>",
        ),
        (
            "Endpoints",
            "string",
            "",
            lambda o: (
                ",".join(a for e in o.get("endpoints") or [] for a in e.get("addresses") or [])
                or "<unset>"
            ),
        ),
        _AGE,
    ],
    "Job": [
        _NAME,
        ("Status", "string", "", _job_status),
        (
            "Completions",
            "string",
            "",
            lambda o: f"{_status(o).get('succeeded', 0)}/{_spec(o).get('completions', 1)}",
        ),
        ("Duration", "string", "", _duration),
        _AGE,
    ],
    "CronJob": [
        _NAME,
        ("Schedule", "string", "", lambda o: _spec(o).get("schedule", "")),
        ("Timezone", "string", "", lambda o: _spec(o).get("timeZone") or "<none>"),
        ("Suspend", "boolean", "", lambda o: str(bool(_spec(o).get("suspend")))),
        ("Active", "integer", "", lambda o: len(_status(o).get("active") or [])),
        ("Last Schedule", "string", "", _last_schedule),
        _AGE,
    ],
    "Node": [
        _NAME,
        ("Status", "string", "", _node_ready),
        ("Roles", "string", "", lambda o: "<none>"),
        _AGE,
        (
            "Version",
            "string",
            "",
            lambda o: (_status(o).get("nodeInfo") or {}).get("kubeletVersion", ""),
        ),
    ],
}


def table(served: Served, items: list[dict[str, Any]], revision: str | None) -> dict[str, Any]:
    columns = COLUMNS[served.kind]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": revision} if revision else {},
        "columnDefinitions": [
            {"name": name, "type": kind, "format": fmt, "description": name, "priority": 0}
            for name, kind, fmt, _ in columns
        ],
        "rows": [row(served, obj) for obj in items],
    }


def row(served: Served, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "cells": [cell(obj) for *_, cell in COLUMNS[served.kind]],
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        },
    }


def wants_table(accept: str | None) -> bool:
    return bool(accept) and "as=Table" in (accept or "")
