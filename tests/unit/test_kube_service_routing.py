"""A Kled Cluster's Service routed to the Deployments its selector picks (pure, no host)."""

from __future__ import annotations

from typing import Any

from kled.control.hostnet import (
    MeshSnapshot,
    NodeAddresses,
    PodAddressBook,
    TeamInfo,
    build_networks,
    snapshot_from_documents,
)
from kled.kube import routing
from kled.resources import clusterservices
from kled.resources.hoststate import ReplicaSpec
from kled.resources.netstate import ServicePort


def _deployment(labels: dict[str, str]) -> dict[str, Any]:
    container = {"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}
    return {
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}},
    }


def _service(name: str, selector: dict[str, str] | None, ip: str = "100.65.4.9") -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterIP": ip, "ports": [{"port": 80, "targetPort": "http"}]}
    if selector is not None:
        spec["selector"] = selector
    return {"metadata": {"name": name, "namespace": "default"}, "spec": spec}


def test_a_service_routes_to_the_deployments_whose_pods_its_selector_picks() -> None:
    deployment = _deployment({"app": "web", "tier": "front"})
    services = [
        _service("web", {"app": "web"}),
        _service("other", {"app": "db"}),
        _service("bare", None),  # no selector: no backends, as Kubernetes
        _service("headless", {"app": "web"}, ip="None"),
    ]
    [picked] = routing.routed("dev", deployment, services)
    assert (picked.name, picked.ip) == ("web", "100.65.4.9")
    assert picked.ports == (clusterservices.ClusterPort("", 80, 8080),)  # targetPort by name


def test_the_annotation_round_trips_and_a_malformed_one_is_no_service() -> None:
    [picked] = routing.routed("dev", _deployment({"app": "web"}), [_service("web", {"app": "web"})])
    doc = {
        "metadata": {"annotations": {clusterservices.ANNOTATION: clusterservices.encode([picked])}}
    }
    assert clusterservices.entries(doc) == [picked]
    assert (
        clusterservices.entries({"metadata": {"annotations": {clusterservices.ANNOTATION: "{"}}})
        == []
    )
    assert [n for _, n in clusterservices.dns_names(picked)] == [
        "web",
        "web.default",
        "web.default.svc.cluster.local",
    ]


def test_the_gateways_send_the_cluster_ip_to_the_apps_ready_replicas() -> None:
    [picked] = routing.routed("dev", _deployment({"app": "web"}), [_service("web", {"app": "web"})])
    app = {
        "kind": "App",
        "metadata": {
            "name": "web",
            "team": "acme",
            "environment": "dev-default",
            "annotations": {clusterservices.ANNOTATION: clusterservices.encode([picked])},
        },
        "spec": {"ports": [{"name": "http", "port": 8080}]},
        "status": {"ip": "100.65.4.1"},
    }
    snap = snapshot_from_documents(
        teams=[], nodes=[], services=[app], devices=[], intercepts=[], dns_server=None
    )
    assert [(s.name, s.ip, s.ports) for s in snap.services] == [
        ("web", "100.65.4.1", (ServicePort(port=8080, target_port=8080),)),
        ("web", "100.65.4.9", (ServicePort(port=80, target_port=8080),)),
    ]
    mesh = MeshSnapshot(dns_server=None, node_names={"n1"}, services=snap.services)
    mesh.teams["acme"] = TeamInfo("acme", "100.65.0.0/16")
    mesh.nodes[("acme", "n1")] = NodeAddresses("100.65.0.1", "100.65.8.0/24")
    replica = ReplicaSpec(team="acme", environment="dev-default", app="web", index=0, command=["x"])
    [team] = build_networks(mesh, {"n1": [replica]}, PodAddressBook())["n1"].teams
    routed = {s.ip: s.backends for s in team.services}
    assert routed["100.65.4.9"] == routed["100.65.4.1"] == ("100.65.8.10",)


def test_a_service_picking_two_deployments_leads_to_the_replicas_of_both() -> None:
    shared = _service("all", {"tier": "front"})
    apps = []
    for name in ("web", "api"):
        deployment = _deployment({"app": name, "tier": "front"})
        [picked] = routing.routed("dev", deployment, [shared])
        apps.append(
            {
                "kind": "App",
                "metadata": {
                    "name": name,
                    "team": "acme",
                    "environment": "dev-default",
                    "annotations": {clusterservices.ANNOTATION: clusterservices.encode([picked])},
                },
                "spec": {},
                "status": {"ip": "100.65.4.1" if name == "web" else "100.65.4.2"},
            }
        )
    snap = snapshot_from_documents(
        teams=[], nodes=[], services=apps, devices=[], intercepts=[], dns_server=None
    )
    mesh = MeshSnapshot(dns_server=None, node_names={"n1"}, services=snap.services)
    mesh.teams["acme"] = TeamInfo("acme", "100.65.0.0/16")
    mesh.nodes[("acme", "n1")] = NodeAddresses("100.65.0.1", "100.65.8.0/24")
    replicas = [
        ReplicaSpec(team="acme", environment="dev-default", app=a, index=0, command=["x"])
        for a in ("web", "api")
    ]
    [team] = build_networks(mesh, {"n1": replicas}, PodAddressBook())["n1"].teams
    [shared_route] = [s for s in team.services if s.ip == "100.65.4.9"]
    assert len(shared_route.backends) == 2
    assert set(shared_route.backends) == {
        s.backends[0] for s in team.services if s.ip != "100.65.4.9"
    }
