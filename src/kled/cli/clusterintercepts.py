"""``kled intercept start|stop svc/NAME --cluster C [-n NS]``: a Kled Cluster's Service.

A cluster Service leads to the replicas of the Apps that run the Deployments its selector
picks; each such App carries the Service (ClusterIP, ports and target ports) in its
annotation ``kled.io/cluster-services`` (``kled.resources.clusterservices``). So an
intercept of the Service is an intercept of each of those Apps, in the environment
``<cluster>-<namespace>``: the gateways then send the App's service IP and the
ClusterIP to the device (``control/hostnet.py`` maps the Service's ports through their
target ports). ``--port SVC:LOCAL`` names the Service's port; it becomes the App's port,
the Service port's target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kled.cli.client import Client
from kled.errors import InvalidInput, NotFound
from kled.kube.workloads import environment_name
from kled.resources import clusterservices

PREFIX = "svc/"


@dataclass(frozen=True)
class Target:
    """One App a cluster Service leads to, with the intercept's ports in the App's terms."""

    environment: str
    app: str
    ports: list[dict[str, int]]


def service_name(word: str) -> str | None:
    """``NAME`` of ``svc/NAME`` (also ``service/NAME``, ``services/NAME``), else None."""
    kind, sep, name = word.partition("/")
    if not sep or kind not in ("svc", "service", "services"):
        return None
    if not name:
        raise InvalidInput(f"{word!r} names no Service", field="APP")
    return name


def targets(
    client: Client,
    team: str,
    cluster: str | None,
    namespace: str,
    name: str,
    ports: list[dict[str, int]],
) -> list[Target]:
    """The Apps Service ``namespace/name`` of ``cluster`` leads to; raises a one-line error
    when there is none or a ``--port`` is not one of the Service's ports."""
    if not cluster:
        raise InvalidInput(
            f"svc/{name} is a Kled Cluster's Service: give --cluster", field="--cluster"
        )
    try:
        client.get(f"/api/v1/teams/{team}/clusters/{cluster}")
    except NotFound:
        raise NotFound(
            f"cluster {cluster} not found in team {team}: see `kled cluster list`"
        ) from None
    env = environment_name(cluster, namespace)
    try:
        apps = client.list_all(f"/api/v1/teams/{team}/environments/{env}/apps")
    except NotFound:
        apps = []
    found: list[Target] = []
    for app in apps:
        for entry in clusterservices.entries(app):
            if (entry.cluster, entry.namespace, entry.name) == (cluster, namespace, name):
                found.append(Target(env, app["metadata"]["name"], _ports(entry, ports)))
    if not found:
        raise NotFound(
            f"service/{name} of cluster {cluster} (namespace {namespace}) leads to no pods: "
            "no such Service, or its selector picks no Deployment (see `kubectl get svc,deploy`)"
        )
    return found


def _ports(entry: clusterservices.ClusterService, ports: list[dict[str, int]]) -> list[Any]:
    by_port = {p.port: p.target_port for p in entry.ports}
    out = []
    for item in ports:
        if item["port"] not in by_port:
            has = ", ".join(str(p) for p in sorted(by_port)) or "none"
            raise InvalidInput(
                f"service/{entry.name} has no port {item['port']} (it has {has})", field="--port"
            )
        out.append({"port": by_port[item["port"]], "localPort": item["localPort"]})
    return out
