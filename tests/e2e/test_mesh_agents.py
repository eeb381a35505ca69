"""Two real agents on two simulated hosts build the team meshes the control plane computes.

The lab (``netlab``) gives three hosts, network namespaces on an underlay bridge in
198.18.0.0/24; the control plane runs in this process (``RunningServer`` with its embedded
NATS), its thread inside host 3 (198.18.0.3); each agent runs
inside its host's network namespace (``nsenter --net=… python -m kled.agent``), registers with
a join token, and from then on builds what its desired state says: team gateways with
WireGuard keys it generates itself, pod namespaces, and replicas started inside them.

What a user would check is checked: team A's service answers by its service IP from a pod
on the other node, spread over both replicas; team B, on the same hosts, cannot reach it;
a killed replica comes back and answers again; an agent killed while its namespaces are
deleted (a host reboot, as far as the network goes) rebuilds them and restarts its replicas
into them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from agentlab import IDLE_CMD, Mesh, eventually, lab_mesh, serve_cmd
from netlab import sh

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

TEAM_A_BLOCK = "100.90.0.0/16"
TEAM_B_BLOCK = "100.91.0.0/16"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    # Hosts 1 and 2 run agents; host 3 is the control plane's machine.
    with lab_mesh(tmp_path, 2, "meshtest") as m:
        yield m


def test_two_agents_build_the_team_mesh_and_keep_it(mesh: Mesh) -> None:
    for i in (1, 2):
        mesh.start_agent(i)
    mesh.team("a", TEAM_A_BLOCK)
    mesh.team("b", TEAM_B_BLOCK)
    try:
        _scenario(mesh)
    except BaseException:
        print(mesh.dump_logs())
        raise


def _keys(mesh: Mesh, node: str, team: str) -> dict[str, Any]:
    entry: dict[str, Any] = mesh.node(node)["status"]["mesh"][team]
    assert entry.get("publicKey") and entry.get("listenPort") and entry.get("ip"), entry
    return entry


def _scenario(mesh: Mesh) -> None:
    # Each node reports its own WireGuard key per team, next to the addresses meshctl gave.
    keys = {
        (n, t): eventually(lambda n=n, t=t: _keys(mesh, n, t), f"{n} key in team {t}")
        for n in ("node1", "node2")
        for t in ("a", "b")
    }
    assert keys[("node1", "a")]["publicKey"] != keys[("node2", "a")]["publicKey"]
    assert keys[("node1", "a")]["publicKey"] != keys[("node1", "b")]["publicKey"]
    key_file = mesh.root / "node1" / "wireguard" / "a.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip() not in json.dumps(mesh.node("node1"))

    ports = [{"port": 80, "targetPort": 8080}]
    pinned_1 = {"lab.kled.io/node": "node1"}
    pinned_2 = {"lab.kled.io/node": "node2"}
    mesh.app("a", "api", {"command": serve_cmd(), "replicas": 2, "ports": ports,
                          "nodeSelector": pinned_1})  # fmt: skip
    mesh.app("a", "client", {"command": IDLE_CMD, "nodeSelector": pinned_2})
    mesh.app("b", "client", {"command": IDLE_CMD, "nodeSelector": pinned_2})

    service_ip = eventually(lambda: mesh.get_app("a", "api")["status"]["ip"], "api service IP")
    client_a = mesh.pod_ns(2, "a", "a.dev.client.0")
    client_b = mesh.pod_ns(2, "b", "b.dev.client.0")

    def spread() -> set[str]:
        answers = set(mesh.ask(client_a, service_ip, 80, count=12))
        ok = {a for a in answers if a.startswith("api-")}
        return ok if len(ok) == 2 and ok == answers else set()

    names = eventually(spread, "api answering from node2 on both replicas")
    pids = {p.pid for p in mesh.replicas()}
    assert {int(n.split("-")[1]) for n in names} <= pids

    # By name, through the pod's resolver: the team gateway relays to the control plane.
    assert mesh.resolve(client_a, "api.dev.a.kled.internal") == service_ip
    # The pod searches its own environment first, then its team: `api` is dev's app.
    assert mesh.resolve(client_a, "api") == service_ip
    assert mesh.resolve(client_a, "api.dev") == service_ip
    by_name = set(mesh.ask(client_a, "api", 80, count=12))
    assert by_name == names, by_name

    # Team B lives on the same hosts, yet has no way to team A's service or pods.
    assert eventually(lambda: os_exists(f"/run/netns/{client_b}"), "team b's pod")
    assert all(a.startswith("!") for a in mesh.ask(client_b, service_ip, 80, count=3))

    # A killed replica is restarted by its agent and answers again, under a new pid.
    victim = int(sorted(names)[0].split("-")[1])
    psutil.Process(victim).kill()

    def replaced() -> set[str]:
        now = spread()
        return now if now and sorted(names)[0] not in now else set()

    after_kill = eventually(replaced, "the killed replica back in the service")
    assert len(after_kill) == 2

    # The agent of node1 dies and its namespaces go (as after a reboot); a new agent
    # rebuilds the gateways and pods and restarts the replicas into them.
    mesh.kill_agent("node1")
    host1 = mesh.lab.host(1)
    for ns in sh("ip", "netns", "list").split():
        if ns.startswith((f"kt-{host1}.", f"kp-{host1}.")):
            sh("ip", "netns", "delete", ns, check=False)
    # The kernel tears a deleted namespace down in the background: wait for the outage.
    eventually(
        lambda: all(a.startswith("!") for a in mesh.ask(client_a, service_ip, 80, count=3)),
        "api unreachable while node1's namespaces are gone",
    )
    mesh.start_agent(1)
    rebuilt = eventually(spread, "api answering again after node1 rebuilt")
    assert len(rebuilt) == 2


def os_exists(path: str) -> bool:
    return Path(path).exists()
