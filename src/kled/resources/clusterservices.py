"""A Kled Cluster's Services as extra service entries on the Apps their selectors pick.

The kube mirror writes, on each App that runs a cluster's Deployment, the annotation
``kled.io/cluster-services``: a JSON list of the cluster Services whose selector picks the
Deployment's pods, each with its ClusterIP and ports. The gateways' snapshot
(``control/hostnet.py``) reads it as more ``ServiceInfo`` of that App — the ClusterIP and
port lead to the App's ready replicas, by the one App service path — and the mesh
controller as more DNS names of the team zone. Both layers read it through ``entries``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ANNOTATION = "kled.io/cluster-services"
#: on a Service: ``"true"`` lets the pods of the team's other clusters reach its ClusterIP
EXPORT_ANNOTATION = "kled.io/export"
#: on an App running a cluster's Deployment: the cluster's name; on a Node that joined
#: with a cluster's join token: ``<team>.<cluster>`` (``reserved_for``), the only workloads
#: placed there
CLUSTER_LABEL = "kled.io/cluster"
#: beside it, on what runs a cluster's workload: the Kubernetes namespace
NAMESPACE_LABEL = "kled.io/namespace"


def reserved_for(team: str, cluster: str) -> str:
    """The value of ``CLUSTER_LABEL`` on the external nodes of ``team``'s ``cluster``."""
    return f"{team}.{cluster}"


@dataclass(frozen=True)
class ClusterPort:
    name: str
    port: int
    target_port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class ClusterService:
    cluster: str
    namespace: str
    name: str
    ip: str
    ports: tuple[ClusterPort, ...]
    #: reachable from the pods of the team's other clusters (``kled.io/export``)
    exported: bool = False


def encode(services: list[ClusterService]) -> str:
    return json.dumps(
        [
            {
                "cluster": s.cluster,
                "namespace": s.namespace,
                "name": s.name,
                "ip": s.ip,
                "ports": [
                    {
                        "name": p.name,
                        "port": p.port,
                        "targetPort": p.target_port,
                        "protocol": p.protocol,
                    }
                    for p in s.ports
                ],
                **({"exported": True} if s.exported else {}),
            }
            for s in sorted(services, key=lambda s: (s.namespace, s.name))
        ],
        sort_keys=True,
    )


def with_services(app: dict[str, Any], services: list[ClusterService]) -> dict[str, Any]:
    """``app`` (an App document) naming the cluster Services routed to it, beside the
    annotations it has (the restart stamp of ``kubectl rollout restart`` among them)."""
    meta = app.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), ANNOTATION: encode(services)}
    return app


def entries(doc: dict[str, Any] | Any) -> list[ClusterService]:
    """The cluster Services an App document carries; a malformed annotation is none."""
    annotations = ((doc.get("metadata") or {}).get("annotations") or {}) if doc else {}
    text = annotations.get(ANNOTATION)
    if not text:
        return []
    try:
        raw = json.loads(text)
        return [
            ClusterService(
                cluster=str(item["cluster"]),
                namespace=str(item["namespace"]),
                name=str(item["name"]),
                ip=str(item["ip"]),
                ports=tuple(
                    ClusterPort(
                        name=str(p.get("name") or ""),
                        port=int(p["port"]),
                        target_port=int(p.get("targetPort") or p["port"]),
                        protocol=str(p.get("protocol") or "TCP"),
                    )
                    for p in item.get("ports") or []
                ),
                exported=item.get("exported") is True,
            )
            for item in raw
            if item.get("ip")
        ]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def dns_names(service: ClusterService) -> list[tuple[str, str]]:
    """(environment, name) pairs under which the team zone answers with the ClusterIP:
    ``<svc>.<ns>.<cluster>`` for the whole team mesh, and, in the environment of the
    Service's namespace (which its pods search first), ``<svc>.<ns>`` and
    ``<svc>.<ns>.svc.cluster.local``."""
    env = f"{service.cluster}-{service.namespace}"
    return [
        (f"{service.namespace}.{service.cluster}", service.name),
        (env, f"{service.name}.{service.namespace}"),
        (env, f"{service.name}.{service.namespace}.svc.cluster.local"),
    ]
