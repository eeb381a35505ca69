"""The pure parts of the agents' mesh: keys, pod placement, reports, Node.status merging.

The host network layer is replaced by a stand-in that records what it was asked to apply
(a fake of the seam, for logic only); the real thing is exercised by test_mesh_agents.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kled.agent.mesh import MeshKeeper
from kled.agent.net.gateway import TeamGateway
from kled.agent.net.host import HostReport
from kled.agent.net.pods import PodNet
from kled.agent.net.wireguard import InterfaceStatus, PeerStatus
from kled.control.nodes import apply_heartbeat
from kled.resources.hoststate import (
    Capacity,
    HostDesiredState,
    NodeHeartbeat,
    ReplicaSpec,
    TeamMeshReport,
)
from kled.resources.netstate import HostNetwork, PodNetwork, TeamNetwork

KEY_A = "A" * 43 + "="
KEY_PEER = "P" * 43 + "="


class RecordingLayer:
    """Builds nothing; reports every team and pod as ready, as a host would."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.applied: list[HostNetwork] = []
        self.ticks = 0

    async def apply(self, desired: HostNetwork) -> HostReport:
        self.applied.append(desired)
        report = HostReport()
        for t in desired.teams:
            report.gateways[t.team] = TeamGateway(
                host_ns=None, host_id="h1", team=t.team, netns=f"kt-h1.{t.team}",
                wg_ifname="kw-x", bridge="kbr0", bridge_ip=t.bridge_ip,
                pod_prefixlen=t.pod_prefixlen, public_key=KEY_A, listen_port=t.listen_port,
                dns_server=None, search_domain=None, state_dir=str(self.tmp),
            )  # fmt: skip
        for p in desired.pods:
            ns = self.pod_netns_path(p.team, p.replica_id)
            Path(ns).touch()
            report.pods[p.replica_id] = PodNet(p.replica_id, p.team, Path(ns).name, p.ip, "v")
        return report

    async def mesh_status(self, team: str) -> InterfaceStatus:
        when = datetime(2026, 1, 1, tzinfo=UTC)
        peer = PeerStatus(KEY_PEER, None, (), when, 0, 0, None)
        return InterfaceStatus(public_key=KEY_A, listen_port=51820, peers=(peer,))

    async def tick(self) -> dict[str, list[str]]:
        self.ticks += 1
        return {}

    def pod_argv(self, team: str, replica_id: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", f"kp-h1.{team}.{replica_id}", *argv]

    def pod_netns_path(self, team: str, replica_id: str) -> str:
        return str(self.tmp / f"kp-h1.{team}.{replica_id}")


def network() -> HostNetwork:
    team = TeamNetwork(
        team="a", block="100.90.0.0/16", mesh_ip="100.90.0.1",
        pod_subnet="100.90.1.0/24", listen_port=51820,
    )  # fmt: skip
    return HostNetwork(
        teams=(team,), pods=(PodNetwork(replica_id="a.dev.api.0", team="a", ip="100.90.1.10"),)
    )


def spec(index: int) -> ReplicaSpec:
    return ReplicaSpec(team="a", environment="dev", app="api", index=index, command=["x"])


needs_wg = pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg (wireguard-tools)")


@needs_wg
async def test_each_team_gets_a_private_key_that_stays_on_the_host(tmp_path: Path) -> None:
    layer = RecordingLayer(tmp_path)
    keeper = MeshKeeper(layer, tmp_path / "keys", node="node1")
    keeper.want(network())
    await keeper.apply_now()
    key = tmp_path / "keys" / "a.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert layer.applied[0].teams[0].private_key_file == str(key)
    # The same key on every pass, and again for a new keeper (an agent restart).
    first = key.read_text()
    again = MeshKeeper(layer, tmp_path / "keys", node="node1")
    again.want(network())
    await again.apply_now()
    assert key.read_text() == first
    reports = await keeper.reports()
    assert reports == {
        "a": TeamMeshReport(
            public_key=KEY_A,
            listen_port=51820,
            handshakes={KEY_PEER: datetime(2026, 1, 1, tzinfo=UTC)},
        )
    }
    assert first.strip() not in reports["a"].model_dump_json()


@needs_wg
async def test_a_replica_with_a_pod_runs_in_it_once_it_is_built(tmp_path: Path) -> None:
    layer = RecordingLayer(tmp_path)
    keeper = MeshKeeper(layer, tmp_path / "keys", node="node1")
    keeper.want(network())
    placed, plain = keeper.place(spec(0)), keeper.place(spec(1))
    assert placed.pod_netns == str(tmp_path / "kp-h1.a.a.dev.api.0")
    assert placed.pod_ip == "100.90.1.10"
    assert plain == spec(1)  # no pod in the network: runs on the host as before
    assert not keeper.pod_ready(placed)  # nothing applied yet
    assert keeper.pod_ready(plain)
    await keeper.apply_now()
    assert keeper.pod_ready(placed)
    await keeper.tick_now()
    assert layer.ticks == 1  # intercepts are judged once a network is in place
    # A pod IP that moved is not the pod that was built.
    assert not keeper.pod_ready(placed.model_copy(update={"pod_ip": "100.90.1.11"}))


async def test_without_a_network_nothing_is_applied_or_reported(tmp_path: Path) -> None:
    layer = RecordingLayer(tmp_path)
    keeper = MeshKeeper(layer, tmp_path / "keys", node="node1")
    keeper.want(None)
    assert await keeper.apply_now() is None
    await keeper.tick_now()
    assert layer.ticks == 0  # nothing to judge before a network was applied
    assert await keeper.reports() == {}
    assert keeper.place(spec(0)) == spec(0)
    assert layer.applied == []


def test_a_desired_state_carries_the_network_over_the_wire() -> None:
    state = HostDesiredState(node="node1", replicas=[spec(0)], network=network())
    back = HostDesiredState.model_validate_json(state.model_dump_json())
    assert back.network == network()
    assert HostDesiredState.model_validate({"node": "n"}).network is None


def heartbeat(**mesh: TeamMeshReport) -> NodeHeartbeat:
    return NodeHeartbeat(
        node="node1",
        capacity=Capacity(cpu_millicores=1000, memory_bytes=1 << 30),
        mesh=mesh,
    )


def test_the_key_and_port_join_what_meshctl_wrote_in_node_status() -> None:
    status = {"mesh": {"a": {"ip": "100.90.0.1", "podSubnet": "100.90.1.0/24", "dns": "n"}}}
    hb = heartbeat(
        a=TeamMeshReport(public_key=KEY_A, listen_port=51820),
        gone=TeamMeshReport(public_key=KEY_PEER, listen_port=51821),
    )
    out = apply_heartbeat(status, hb)
    assert out["mesh"] == {
        "a": {
            "ip": "100.90.0.1",
            "podSubnet": "100.90.1.0/24",
            "dns": "n",
            "publicKey": KEY_A,
            "listenPort": 51820,
        }
    }  # a team meshctl has not (or no longer) given the node is not brought back
    assert status["mesh"]["a"].get("publicKey") is None  # the input is left alone
    # A heartbeat without mesh reports keeps what is known.
    assert apply_heartbeat(out, heartbeat())["mesh"] == out["mesh"]
