"""Which cluster Services route to a Deployment's pods, as the entries its App carries.

A Service's selector picks the pods whose labels hold all of it; the pods of a Deployment
have its template's labels, so a Service routes to every Deployment whose template the
selector picks. A Service without a selector, a headless one or one whose selector picks
nothing has no backends. ``targetPort`` is a number or the name of a container port; a
name no container has gives that port no backend.
"""

from __future__ import annotations

from typing import Any

from kled.resources.clusterservices import EXPORT_ANNOTATION, ClusterPort, ClusterService


def selects(selector: dict[str, Any] | None, labels: dict[str, Any] | None) -> bool:
    if not selector:
        return False
    have = labels or {}
    return all(have.get(k) == v for k, v in selector.items())


def _container_ports(deployment: dict[str, Any]) -> dict[str, int]:
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    return {
        str(p["name"]): int(p["containerPort"])
        for c in spec.get("containers") or []
        for p in c.get("ports") or []
        if p.get("name") and p.get("containerPort")
    }


def routed(
    cluster: str, deployment: dict[str, Any], services: list[dict[str, Any]]
) -> list[ClusterService]:
    """The Services of ``services`` (of the Deployment's namespace) that pick its pods."""
    template = (deployment.get("spec") or {}).get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    named = _container_ports(deployment)
    out: list[ClusterService] = []
    for service in services:
        spec = service.get("spec") or {}
        ip = spec.get("clusterIP") or ""
        if not ip or ip == "None" or not selects(spec.get("selector"), labels):
            continue
        ports: list[ClusterPort] = []
        for p in spec.get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            number = named.get(target) if isinstance(target, str) else target
            if isinstance(target, str) and target.isdigit():
                number = int(target)
            if number is None:
                continue
            ports.append(
                ClusterPort(
                    name=str(p.get("name") or ""),
                    port=int(p["port"]),
                    target_port=int(number),
                    protocol=str(p.get("protocol") or "TCP"),
                )
            )
        meta = service["metadata"]
        exported = (meta.get("annotations") or {}).get(EXPORT_ANNOTATION) == "true"
        out.append(
            ClusterService(
                cluster, meta.get("namespace", "default"), meta["name"], ip, tuple(ports), exported
            )
        )
    return out
