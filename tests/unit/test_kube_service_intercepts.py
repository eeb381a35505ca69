"""An intercept of an App that runs a Kled Cluster's Deployment also takes the ClusterIPs of
the cluster Services leading to it, port by port through their target ports (pure)."""

from __future__ import annotations

from kled.control.hostnet import (
    InterceptInfo,
    MeshSnapshot,
    NodeAddresses,
    PodAddressBook,
    TeamInfo,
    build_networks,
    snapshot_from_documents,
)
from kled.resources import clusterservices
from kled.resources.hoststate import ReplicaSpec
from kled.resources.netstate import Service

FRONT = clusterservices.ClusterService(
    "dev",
    "default",
    "front",
    "100.65.4.9",
    (
        clusterservices.ClusterPort("http", 80, 8080),
        clusterservices.ClusterPort("admin", 81, 9090),
    ),
)


def _services(port_map: tuple[tuple[int, int], ...]) -> dict[str, Service]:
    app = {
        "kind": "App",
        "metadata": {
            "name": "web",
            "team": "acme",
            "environment": "dev-default",
            "annotations": {clusterservices.ANNOTATION: clusterservices.encode([FRONT])},
        },
        "spec": {"ports": [{"port": 8080}, {"port": 9090}]},
        "status": {"ip": "100.65.4.1"},
    }
    snap = snapshot_from_documents(
        teams=[], nodes=[], services=[app], devices=[], intercepts=[], dns_server=None
    )
    mesh = MeshSnapshot(dns_server=None, node_names={"n1"}, services=snap.services)
    mesh.teams["acme"] = TeamInfo("acme", "100.65.0.0/16")
    mesh.nodes[("acme", "n1")] = NodeAddresses("100.65.0.1", "100.65.8.0/24")
    mesh.intercepts.append(
        InterceptInfo("acme", "dev-default", "web-laptop", "web", "100.65.0.7", port_map)
    )
    replica = ReplicaSpec(team="acme", environment="dev-default", app="web", index=0, command=["x"])
    [team] = build_networks(mesh, {"n1": [replica]}, PodAddressBook())["n1"].teams
    return {s.ip: s for s in team.services}


def test_the_cluster_ip_follows_the_apps_intercept_through_target_ports() -> None:
    routed = _services(((8080, 7070),))  # `--port 80:7070` of svc/front, in the app's terms
    app, cluster_ip = routed["100.65.4.1"], routed["100.65.4.9"]
    assert app.intercept is not None and app.intercept.port_map == {8080: 7070}
    assert cluster_ip.intercept is not None and cluster_ip.intercept.port_map == {80: 7070}
    assert cluster_ip.intercept.target_ip == "100.65.0.7"


def test_every_service_port_goes_to_its_target_port_when_no_port_is_given() -> None:
    cluster_ip = _services(())["100.65.4.9"]
    assert cluster_ip.intercept is not None
    assert cluster_ip.intercept.port_map == {80: 8080, 81: 9090}
