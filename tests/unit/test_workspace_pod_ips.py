"""A workspace's pod on the team mesh: its IP from the node's pod subnet, its DNS name."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kled.control.hostnet import (
    HostStateComposer,
    InterceptInfo,
    MeshSnapshot,
    NodeAddresses,
    PodAddressBook,
    ServiceInfo,
    TeamInfo,
    build_networks,
    pod_ips_by_app,
)
from kled.resources.hoststate import HostDesiredState, ReplicaSpec
from kled.resources.netstate import ServicePort
from kled.resources.specs import InterceptSpec
from kled.resources.workspacestate import WorkspaceOnHost


def _snap() -> MeshSnapshot:
    snap = MeshSnapshot(dns_server="100.65.0.250:53", node_names={"n1"})
    snap.teams["acme"] = TeamInfo("acme", "100.65.0.0/16")
    snap.nodes[("acme", "n1")] = NodeAddresses("100.65.0.1", "100.65.8.0/24")
    snap.services.append(
        ServiceInfo("acme", "dev", "api", "100.65.4.1", (ServicePort(port=80, target_port=8080),))
    )
    return snap


def _api(index: int) -> ReplicaSpec:
    return ReplicaSpec(team="acme", environment="dev", app="api", index=index, command=["true"])


def test_a_workspace_gets_a_pod_beside_replicas_and_is_never_a_backend() -> None:
    book = PodAddressBook()
    ws = WorkspaceOnHost(team="acme", name="shop")
    nets = build_networks(_snap(), {"n1": [_api(0)]}, book, workspaces={"n1": [ws]})
    pods = {p.replica_id: p.ip for p in nets["n1"].pods}
    assert pods == {"acme._ws.shop.0": "100.65.8.10", "acme.dev.api.0": "100.65.8.11"}
    [svc] = nets["n1"].teams[0].services
    assert svc.backends == ("100.65.8.11",)
    assert pod_ips_by_app(book) == {("acme", "dev", "api"): {"0": "100.65.8.11"}}
    # The workspace keeps its address as replicas come and go.
    again = build_networks(_snap(), {"n1": [_api(1), _api(2)]}, book, workspaces={"n1": [ws]})
    assert {p.replica_id: p.ip for p in again["n1"].pods}["acme._ws.shop.0"] == "100.65.8.10"


def test_a_workspace_of_a_team_without_addresses_on_the_node_gets_no_pod() -> None:
    ws = WorkspaceOnHost(team="other", name="shop")
    nets = build_networks(_snap(), {}, PodAddressBook(), workspaces={"n1": [ws]})
    assert nets["n1"].pods == ()


async def test_the_composer_tells_the_workspaces_names_when_they_move() -> None:
    sent: dict[str, Any] = {}
    told: list[dict[str, dict[str, str]]] = []

    class Inner:
        def put(self, node: str, state: HostDesiredState) -> None:
            sent[node] = state

    composer = HostStateComposer(Inner())
    composer.on_workspace_ips = told.append
    await composer.set_mesh(_snap())
    ws = WorkspaceOnHost(team="acme", name="shop")
    await composer.put("n1", HostDesiredState(node="n1", workspaces=[ws]))
    assert told == [{"acme": {"shop": "100.65.8.10"}}]
    network = sent["n1"].network
    assert [(p.replica_id, p.ip) for p in network.pods] == [("acme._ws.shop.0", "100.65.8.10")]
    await composer.put("n1", HostDesiredState(node="n1", workspaces=[]))
    assert told[-1] == {}
    assert sent["n1"].network.pods == ()


def test_an_intercept_to_a_workspace_points_the_service_at_its_pod() -> None:
    snap = _snap()
    snap.intercepts.append(
        InterceptInfo("acme", "dev", "api-ws-shop", "api", "", ((80, 9000),), workspace="shop")
    )
    ws = WorkspaceOnHost(team="acme", name="shop")
    nets = build_networks(snap, {"n1": [_api(0)]}, PodAddressBook(), workspaces={"n1": [ws]})
    [svc] = nets["n1"].teams[0].services
    assert svc.intercept is not None
    assert (svc.intercept.target_ip, svc.intercept.port_map) == ("100.65.8.10", {80: 9000})
    # No pod for it (not placed): the app keeps its replicas.
    alone = build_networks(snap, {"n1": [_api(0)]}, PodAddressBook())
    assert alone["n1"].teams[0].services[0].intercept is None


def test_an_intercept_target_is_a_device_or_ws_and_a_workspace() -> None:
    assert InterceptSpec(app="api", device="ws/shop").device == "ws/shop"
    with pytest.raises(ValidationError, match="ws/ and a workspace's name"):
        InterceptSpec(app="api", device="ws/Shop!")
