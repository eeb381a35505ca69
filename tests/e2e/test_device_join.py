"""``kled device join`` on a machine standing in for a laptop reaches a team's app by name.

Host 1 runs a real agent (registered with a join token) and the app's replica; host 2 is
the laptop: ``kled device join`` runs inside its network namespace as the team member alice,
generates the key there, registers only the public key, brings up its WireGuard interface
and route; then the app's name, asked of the team's DNS server, gives its service IP, and
the service answers over the mesh. ``kled device leave`` takes it all away again. The
control plane runs on host 3 (``agentlab.lab_mesh``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentlab import Mesh, eventually, lab_mesh, laptop_ifname, laptop_kled, serve_cmd
from netlab import sh

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

TEAM_A_BLOCK = "100.90.0.0/16"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    # Host 1 runs the agent, host 2 is the laptop, host 3 the control plane.
    with lab_mesh(tmp_path, 2, "devjoin") as m:
        yield m


def test_join_reaches_an_app_by_name_and_leave_undoes_it(mesh: Mesh, tmp_path: Path) -> None:
    mesh.start_agent(1)
    mesh.team("a", TEAM_A_BLOCK)
    mesh.api("POST", "/api/v1/teams/a/users", {"metadata": {"name": "alice"}, "spec": {}})
    token = mesh.api(
        "POST",
        "/api/v1/teams/a/tokens",
        {"metadata": {"name": "alice-t"}, "spec": {"user": "alice"}},
    )["token"]
    mesh.app("a", "api", {"command": serve_cmd(), "ports": [{"port": 80, "targetPort": 8080}]})
    service_ip = eventually(lambda: mesh.get_app("a", "api")["status"]["ip"], "api service IP")
    home = tmp_path / "laptop"
    # Its wireguard-go (and socket) are cleaned up with the lab if the test fails midway.
    mesh.lab.ifnames.add(laptop_ifname(home))
    try:
        joined = laptop_kled(mesh, home, token, "device", "join", "laptop")
        assert joined.returncode == 0, joined.stderr + mesh.dump_logs()
        assert "device/laptop joined team a as 100.90." in joined.stdout
        # No systemd-resolved in a namespace: the documented fallback is printed.
        assert "nameserver" in joined.stdout + joined.stderr

        key = (home / "data" / "kled" / "devices" / "a" / "laptop.key").read_text().strip()
        registered = mesh.api("GET", "/api/v1/teams/a/devices/laptop")
        assert registered["spec"]["owner"] == "alice" and key not in str(registered)

        config = mesh.api("GET", "/api/v1/teams/a/devices/laptop/wireguard")
        dns_ip, _, dns_port = config["dns"].rpartition(":")
        assert dns_ip == mesh.server_ip
        name = f"api.dev.{config['zone']}"

        def resolved() -> str:
            out = sh("ip", "netns", "exec", mesh.lab.host(2), "dig", "+short", "+time=1",
                     "+tries=1", "-p", dns_port, f"@{dns_ip}", name)  # fmt: skip
            return out.strip()

        assert eventually(resolved, f"{name} from the laptop") == service_ip

        def answered() -> bool:
            answers = mesh.ask(mesh.lab.host(2), service_ip, 80, count=2)
            return all(a.startswith("api-") for a in answers)

        assert eventually(answered, "api answering the laptop over the mesh")

        left = laptop_kled(mesh, home, token, "device", "leave", "laptop")
        assert left.returncode == 0, left.stderr
        assert all(a.startswith("!") for a in mesh.ask(mesh.lab.host(2), service_ip, 80, 1))
        with pytest.raises(AssertionError):
            mesh.api("GET", "/api/v1/teams/a/devices/laptop")
    except BaseException:
        print(mesh.dump_logs())
        raise


def test_intercept_to_a_joined_laptop_and_back(mesh: Mesh, tmp_path: Path) -> None:
    """Issue 5 end to end: a pod calls the app by service IP; `kled intercept start` sends
    it to the laptop's process; `stop` (and the laptop leaving) returns it to the replica.
    Both return only once the gateway applied them (issue 10): no call in between misses."""
    mesh.start_agent(1)
    mesh.team("a", TEAM_A_BLOCK)
    mesh.api("POST", "/api/v1/teams/a/users", {"metadata": {"name": "alice"}, "spec": {}})
    token = mesh.api(
        "POST",
        "/api/v1/teams/a/tokens",
        {"metadata": {"name": "alice-t"}, "spec": {"user": "alice"}},
    )["token"]
    mesh.app("a", "api", {"command": serve_cmd(), "ports": [{"port": 80, "targetPort": 8080}]})
    mesh.app("a", "client", {"command": ["sleep", "100000"]})
    service_ip = eventually(lambda: mesh.get_app("a", "api")["status"]["ip"], "api service IP")
    caller = mesh.pod_ns(1, "a", "a.dev.client.0")
    home = tmp_path / "laptop"
    mesh.lab.ifnames.add(laptop_ifname(home))

    def intercept() -> dict[str, Any]:
        doc: dict[str, Any] = mesh.api(
            "GET", "/api/v1/teams/a/environments/dev/intercepts/api-laptop"
        )
        return doc

    def phase() -> str:
        return str(intercept().get("status", {}).get("phase"))

    def lands(where: str) -> bool:
        answers = mesh.ask(caller, service_ip, 80, count=3)
        return all(a.startswith(where) for a in answers)

    try:
        assert eventually(lambda: lands("api-"), "the replica answering the client pod")
        joined = laptop_kled(mesh, home, token, "device", "join", "laptop")
        assert joined.returncode == 0, joined.stderr
        laptop_ip = mesh.api("GET", "/api/v1/teams/a/devices/laptop")["status"]["ip"]
        mesh.lab.serve(mesh.lab.host(2), "laptop", 7070, 7071, bind=laptop_ip)
        started = laptop_kled(
            mesh, home, token, "intercept", "start", "api", "-e", "dev", "--to", "laptop",
            "--port", "80:7070",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        # `start` returns once every gateway applied it: the very next calls land there.
        assert "intercept/dev/api-laptop: active on 1/1 gateways in " in started.stdout
        assert lands("laptop"), "a replica answered right after `intercept start` returned"
        assert eventually(lambda: phase() == "Active", "the intercept Active")
        assert intercept()["status"]["gateways"] == "1/1"

        # The laptop drops off the network: node1's gateway misses its keepalives, sends
        # the calls back to the replica, and the Intercept says so; back online, resumed.
        sh("ip", "-n", mesh.lab.host(2), "link", "set", "eth0", "down")
        assert eventually(lambda: phase() == "Fallback", "the intercept in Fallback")
        message = intercept()["status"]["message"]
        assert "device laptop silent" in message and "node1" in message, message
        assert eventually(lambda: lands("api-"), "the replica answering while offline")
        sh("ip", "-n", mesh.lab.host(2), "link", "set", "eth0", "up")
        assert eventually(lambda: phase() == "Active", "the intercept Active again")
        assert eventually(lambda: lands("laptop"), "the laptop answering again")

        # The agent dies (kill -9) mid-intercept: traffic keeps going where it was
        # pointed, and the restarted agent keeps it there.
        def beat() -> str:
            return str(mesh.node("node1").get("status", {}).get("lastHeartbeat"))

        mesh.kill_agent("node1")
        before = beat()
        assert lands("laptop"), "traffic moved while node1's agent was down"
        # Nobody applies a new intercept meanwhile (node1 is still Ready for a few
        # seconds): `start` says which gateway is late, and fails.
        late = laptop_kled(
            mesh, home, token, "intercept", "start", "api", "-e", "dev", "--to", "laptop",
            "--port", "80:7070", "--header", "x-dev=me", "--timeout", "1",
        )  # fmt: skip
        assert late.returncode == 1, late.stdout + late.stderr
        assert "0/1 gateways after 1 s; not yet applied by node1" in late.stderr, late.stderr
        assert late.stderr.count("\n") == 1, late.stderr
        mesh.start_agent(1)
        eventually(lambda: beat() != before, "a heartbeat of node1's new agent")
        time.sleep(6)  # past its first full network pass (every 5 s)
        assert all(lands("laptop") for _ in range(3)), "the restarted agent moved traffic"

        stopped = laptop_kled(mesh, home, token, "intercept", "stop", "api", "-e", "dev")
        assert stopped.returncode == 0, stopped.stderr
        assert "intercept/dev/api-laptop: removed from 1/1 gateways in " in stopped.stdout
        assert lands("api-"), "the laptop answered right after `intercept stop` returned"
    except BaseException:
        print(mesh.dump_logs())
        raise
