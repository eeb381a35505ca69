"""Each host's network, composed from the mesh's resources (pure, no host)."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest

from kled.control.hostnet import (
    HostStateComposer,
    InterceptInfo,
    MeshSnapshot,
    NodeAddresses,
    PodAddressBook,
    ServiceInfo,
    TeamInfo,
    build_networks,
    listen_port,
    pod_ips_by_app,
    snapshot_from_documents,
)
from kled.resources.hoststate import HostDesiredState, ReplicaSpec
from kled.resources.netstate import HostNetwork, ServicePort


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def replica(app: str, index: int, team: str = "acme", env: str = "dev") -> ReplicaSpec:
    return ReplicaSpec(team=team, environment=env, app=app, index=index, command=["true"])


def two_nodes() -> MeshSnapshot:
    """Team acme (100.65.0.0/16) on n1 and n2, with app api on port 80 → 8080."""
    snap = MeshSnapshot(dns_server="100.65.0.250:53", node_names={"n1", "n2"})
    snap.teams["acme"] = TeamInfo("acme", "100.65.0.0/16")
    snap.nodes[("acme", "n1")] = NodeAddresses("100.65.0.1", "100.65.8.0/24")
    snap.nodes[("acme", "n2")] = NodeAddresses("100.65.0.2", "100.65.9.0/24")
    snap.services.append(
        ServiceInfo("acme", "dev", "api", "100.65.4.1", (ServicePort(port=80, target_port=8080),))
    )
    return snap


def test_every_node_gets_the_team_and_the_service_backed_by_replicas_on_any_node() -> None:
    nets = build_networks(
        two_nodes(), {"n1": [replica("api", 0)], "n2": [replica("api", 1)]}, PodAddressBook()
    )
    n1, n2 = nets["n1"], nets["n2"]
    [team1] = n1.teams
    assert (team1.mesh_ip, team1.pod_subnet) == ("100.65.0.1", "100.65.8.0/24")
    assert team1.listen_port == n2.teams[0].listen_port == listen_port("100.65.0.0/16")
    assert team1.dns_server == "100.65.0.250:53"
    assert team1.search_domain == "acme.kled.internal"
    assert team1.peers == ()  # peers travel on their own, one key each (peersync)
    [svc] = team1.services
    assert svc.ip == "100.65.4.1"
    assert svc.backends == ("100.65.8.10", "100.65.9.10")
    assert n2.teams[0].services == team1.services  # the same DNAT rules on every gateway
    assert [(p.replica_id, p.ip) for p in n1.pods] == [("acme.dev.api.0", "100.65.8.10")]
    assert [(p.replica_id, p.ip) for p in n2.pods] == [("acme.dev.api.1", "100.65.9.10")]


def test_only_running_replicas_serve_but_every_placed_replica_keeps_its_pod() -> None:
    snap = two_nodes()
    snap.running = {"acme.dev.api.1"}  # replica 0 crashed and is waiting to restart
    nets = build_networks(
        snap, {"n1": [replica("api", 0)], "n2": [replica("api", 1)]}, PodAddressBook()
    )
    [svc] = nets["n1"].teams[0].services
    assert svc.backends == ("100.65.9.10",)
    assert [p.replica_id for p in nets["n1"].pods] == ["acme.dev.api.0"]


def test_a_node_without_addresses_in_a_team_gets_no_gateway_and_no_pods_of_it() -> None:
    snap = two_nodes()
    nets = build_networks(snap, {"n3": [replica("api", 0)]}, PodAddressBook())
    assert nets["n3"] == HostNetwork()
    assert nets["n1"].teams[0].services[0].backends == ()


def test_teams_on_one_host_get_distinct_stable_listen_ports() -> None:
    blocks = [
        "100.64.0.0/16",
        "100.65.0.0/16",
        "100.66.0.0/24",
        "100.66.1.0/24",
        "127.255.255.0/24",
    ]
    ports = [listen_port(b.replace("127.255.255.0", "100.127.255.0")) for b in blocks]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < 32768 for p in ports)
    assert listen_port("100.65.0.0/16") == listen_port("100.65.0.0/16")


def test_pod_ips_stay_put_as_replicas_come_and_go() -> None:
    book = PodAddressBook()
    first = book.assign("100.65.8.0/24", ["a.dev.x.0", "a.dev.x.1"])
    assert first == {"a.dev.x.0": "100.65.8.10", "a.dev.x.1": "100.65.8.11"}
    # x.0 goes away, y.0 arrives: x.1 keeps its address, y.0 takes the lowest free one
    # but not x.0's, as x.0 may still be stopping in its pod (test_pod_address_reuse).
    second = book.assign("100.65.8.0/24", ["a.dev.x.1", "a.dev.y.0"])
    assert second == {"a.dev.x.1": "100.65.8.11", "a.dev.y.0": "100.65.8.12"}
    # A replica that moves to another node's subnet gets an address there.
    third = book.assign("100.65.9.0/24", ["a.dev.x.1"])
    assert third == {"a.dev.x.1": "100.65.9.10"}


def test_a_new_book_keeps_the_addresses_recorded_in_app_status() -> None:
    seeds = {"a.dev.x.0": "100.65.8.42", "a.dev.x.1": "100.65.8.42", "a.dev.z.0": "100.65.7.3"}
    ips = PodAddressBook().assign("100.65.8.0/24", ["a.dev.x.0", "a.dev.x.1", "a.dev.z.0"], seeds)
    assert ips["a.dev.x.0"] == "100.65.8.42"  # its recorded address
    assert ips["a.dev.x.1"] == "100.65.8.10"  # a duplicate claim loses
    assert ips["a.dev.z.0"] == "100.65.8.11"  # an address outside the subnet is not kept


def test_a_full_pod_subnet_leaves_the_extra_replica_out() -> None:
    ids = [f"a.dev.x.{i}" for i in range(6)]
    ips = PodAddressBook().assign("100.65.8.0/28", ids)  # .10 to .14
    assert sorted(ips.values()) == [f"100.65.8.{n}" for n in range(10, 15)]
    assert len(ips) == 5


def test_a_full_pod_subnet_is_said_once_not_per_replica_and_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    book = PodAddressBook()
    ids = [f"a.dev.x.{i}" for i in range(8)]
    with caplog.at_level(logging.INFO, logger="kled.control.hostnet"):
        for _ in range(5):  # every recomputation of the host networks
            book.assign("100.65.8.0/28", ids)
        book.assign("100.65.8.0/28", ids[:4])  # room again
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "hostnet: pod subnet 100.65.8.0/28 is full: replica/a.dev.x.5 and 2 more have no IP",
        "hostnet: pod subnet 100.65.8.0/28 has room for all its replicas again",
    ]


def test_an_intercept_keeps_its_choice_for_an_offline_device() -> None:
    snap = two_nodes()
    snap.intercepts = [
        InterceptInfo("acme", "dev", "g", "api", "100.65.0.7", on_device_offline="keep"),
        InterceptInfo("acme", "dev", "p", "api", "100.65.0.8", header=("X-Dev", "ada")),
    ]
    svc = build_networks(snap, {}, PodAddressBook())["n1"].teams[0].services[0]
    assert svc.intercept is not None and svc.intercept.on_device_offline == "keep"
    assert [p.on_device_offline for p in svc.personal] == ["fallback"]


def test_intercepts_point_the_service_at_the_device() -> None:
    snap = two_nodes()
    snap.services[0] = ServiceInfo(
        "acme",
        "dev",
        "api",
        "100.65.4.1",
        (
            ServicePort(port=80, target_port=8080),
            ServicePort(port=53, protocol="UDP", target_port=53),
        ),
    )
    snap.intercepts = [
        InterceptInfo("acme", "dev", "b-later", "api", "100.65.0.9"),
        InterceptInfo("acme", "dev", "a-first", "api", "100.65.0.7", port_map=((80, 3000),)),
        InterceptInfo("acme", "dev", "mine", "api", "100.65.0.8", header=("X-Kled-Dev", "ada")),
        InterceptInfo("acme", "dev", "other", "web", "100.65.0.6"),
    ]
    svc = build_networks(snap, {}, PodAddressBook())["n1"].teams[0].services[0]
    assert svc.intercept is not None
    assert (svc.intercept.target_ip, svc.intercept.port_map) == ("100.65.0.7", {80: 3000})
    [personal] = svc.personal
    assert (personal.header, personal.value, personal.target_ip) == (
        "x-kled-dev",
        "ada",
        "100.65.0.8",
    )
    assert personal.port_map == {80: 80}  # only TCP ports can be routed by header


def _doc(kind: str, name: str, team: str = "", env: str = "", **parts: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if team:
        meta["team"] = team
    if env:
        meta["environment"] = env
    return {"kind": kind, "metadata": meta, **parts}


def test_the_snapshot_is_read_from_the_resources() -> None:
    mesh = {"acme": {"ip": "100.65.0.1", "podSubnet": "100.65.8.0/24", "publicKey": key(1)}}
    snap = snapshot_from_documents(
        teams=[_doc("Team", "acme", status={"block": "100.65.0.0/16", "zone": "acme.corp.test"})],
        nodes=[_doc("Node", "n1", status={"mesh": mesh}), _doc("Node", "n2", status={})],
        services=[
            _doc(
                "App",
                "api",
                "acme",
                "dev",
                spec={"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
                status={"ip": "100.65.4.1", "podIPs": {"0": "100.65.8.10"}},
            ),
            _doc("App", "pending", "acme", "dev", spec={}, status={}),
        ],
        devices=[_doc("Device", "laptop", "acme", spec={}, status={"ip": "100.65.0.5"})],
        intercepts=[
            _doc(
                "Intercept",
                "i",
                "acme",
                "dev",
                spec={"app": "api", "device": "laptop", "ports": [{"port": 80, "localPort": 3000}]},
            ),
            _doc("Intercept", "gone", "acme", "dev", spec={"app": "api", "device": "nope"}),
        ],
        dns_server="100.65.0.250:53",
    )
    assert snap.teams == {"acme": TeamInfo("acme", "100.65.0.0/16", "corp.test")}
    assert snap.node_names == {"n1", "n2"}
    assert snap.nodes == {("acme", "n1"): NodeAddresses("100.65.0.1", "100.65.8.0/24")}
    [svc] = snap.services
    assert svc.ports == (ServicePort(port=80, target_port=8080),)
    assert snap.pod_ip_seeds == {"acme.dev.api.0": "100.65.8.10"}
    [icpt] = snap.intercepts
    assert (icpt.device_ip, icpt.port_map) == ("100.65.0.5", ((80, 3000),))
    net = build_networks(snap, {"n1": [replica("api", 0)]}, PodAddressBook())["n1"]
    assert net.teams[0].search_domain == "acme.corp.test"
    assert net.pods[0].ip == "100.65.8.10"


class Inner:
    def __init__(self) -> None:
        self.sent: list[tuple[str, HostDesiredState]] = []

    async def put(self, node: str, state: HostDesiredState) -> None:
        self.sent.append((node, state))


async def test_the_composer_forwards_replicas_with_their_network_and_mesh_changes() -> None:
    inner = Inner()
    composer = HostStateComposer(inner)
    await composer.set_mesh(two_nodes())
    assert inner.sent == []  # nothing known of the nodes' replicas yet
    await composer.put("n1", HostDesiredState(node="n1", replicas=[replica("api", 0)]))
    await composer.put("n2", HostDesiredState(node="n2", replicas=[]))
    [(n1, s1), (n2, s2)] = inner.sent
    assert (n1, n2) == ("n1", "n2")
    assert s1.network is not None and s1.network.pods[0].ip == "100.65.8.10"
    assert s2.network is not None and s2.network.teams[0].services[0].backends == ("100.65.8.10",)
    assert pod_ips_by_app(composer.book) == {("acme", "dev", "api"): {"0": "100.65.8.10"}}
    inner.sent.clear()
    await composer.set_mesh(two_nodes())
    assert inner.sent == []  # nothing changed: nothing sent
    changed = two_nodes()
    changed.node_dns["n2"] = "198.18.0.9:53"
    await composer.set_mesh(changed)
    assert [n for n, _ in inner.sent] == ["n2"]
    # A deleted node (no longer in the mesh, nothing to run) is not written again.
    inner.sent.clear()
    gone = two_nodes()
    gone.node_names.discard("n2")
    del gone.nodes[("acme", "n2")]
    await composer.set_mesh(gone)
    assert inner.sent == []


async def test_many_nodes_states_at_once_reach_each_node_once_and_whole() -> None:
    """A round of scheduling that changes several nodes hands them over together: each
    node is sent once, its network already counting the other nodes' new replicas (one
    at a time, the first node got a network without the second's and was sent again)."""
    inner = Inner()
    composer = HostStateComposer(inner)
    await composer.set_mesh(two_nodes())
    await composer.put_many(
        {
            "n1": HostDesiredState(node="n1", replicas=[replica("api", 0)]),
            "n2": HostDesiredState(node="n2", replicas=[replica("api", 1)]),
        }
    )
    assert sorted(n for n, _ in inner.sent) == ["n1", "n2"]
    for _, state in inner.sent:
        assert state.network is not None
        assert state.network.teams[0].services[0].backends == ("100.65.8.10", "100.65.9.10")


async def test_the_composer_leaves_networks_alone_until_it_knows_the_mesh() -> None:
    inner = Inner()
    composer = HostStateComposer(inner)
    state = HostDesiredState(node="n1", replicas=[replica("api", 0)])
    await composer.put("n1", state)
    # None means "leave the network alone", not "tear it down": a restarting control plane
    # must not empty every host for the instant before it has read the mesh back.
    assert inner.sent == [("n1", state)] and state.network is None
    await composer.set_mesh(two_nodes())
    [_, (node, sent)] = inner.sent
    assert node == "n1" and sent.replicas == state.replicas
    assert sent.network is not None and sent.network.pods[0].ip == "100.65.8.10"


@pytest.mark.parametrize("block", ["100.64.0.0/10", "100.127.255.0/24"])
def test_listen_ports_stay_valid_at_both_ends_of_the_space(block: str) -> None:
    assert 16384 <= listen_port(block) <= 32767


def test_only_ready_replicas_are_backends_and_old_reports_count_running_as_ready() -> None:
    mesh = {"acme": {"ip": "100.65.0.1", "podSubnet": "100.65.8.0/24", "publicKey": key(1)}}
    replicas = [
        {"index": 0, "state": "Running", "ready": False},  # readiness failing, or stopping
        {"index": 1, "state": "Running", "ready": True},
        {"index": 2, "state": "Running"},  # an agent from before probes
        {"index": 3, "state": "Starting", "ready": True},
    ]
    snap = snapshot_from_documents(
        teams=[_doc("Team", "acme", status={"block": "100.65.0.0/16"})],
        nodes=[_doc("Node", "n1", status={"mesh": mesh})],
        services=[
            _doc(
                "App",
                "api",
                "acme",
                "dev",
                spec={"ports": [{"port": 80}]},
                status={"ip": "100.65.4.1", "replicas": replicas},
            )
        ],
        devices=[],
        intercepts=[],
        dns_server=None,
    )
    assert snap.running == {"acme.dev.api.1", "acme.dev.api.2"}
    net = build_networks(snap, {"n1": [replica("api", i) for i in range(4)]}, PodAddressBook())
    pods = {p.replica_id: p.ip for p in net["n1"].pods}
    assert len(pods) == 4  # every placed replica keeps its pod
    [svc] = net["n1"].teams[0].services
    assert svc.backends == (pods["acme.dev.api.1"], pods["acme.dev.api.2"])
