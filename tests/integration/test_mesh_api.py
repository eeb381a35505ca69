"""The mesh in a running control plane: DNS, blocks at admission, addresses, device configs."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kled.api.addresses import route_source
from kled.resources.hoststate import HostDesiredState, ReplicaSpec
from kled.resources.netstate import HostNetwork
from servers import RunningServer

T = TypeVar("T")
APPS = "/api/v1/teams/acme/environments/dev/apps"


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def make_team(server: RunningServer, team: str, **spec: Any) -> None:
    with server.client() as admin:
        r = admin.post("/api/v1/teams", json={"metadata": {"name": team}, "spec": spec})
        assert r.status_code == 201, r.text
        r = admin.post(f"/api/v1/teams/{team}/environments", json={"metadata": {"name": "dev"}})
        assert r.status_code == 201, r.text


def make_user(server: RunningServer, team: str, name: str, role: str) -> str:
    with server.client() as admin:
        r = admin.post(
            f"/api/v1/teams/{team}/users", json={"metadata": {"name": name}, "spec": {"role": role}}
        )
        assert r.status_code == 201, r.text
        r = admin.post(
            f"/api/v1/teams/{team}/tokens",
            json={"metadata": {"name": f"{name}-token"}, "spec": {"user": name}},
        )
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token


def app_doc(name: str) -> dict[str, Any]:
    return {
        "kind": "App",
        "metadata": {"name": name},
        "spec": {"command": ["sleep", "60"], "ports": [{"name": "http", "port": 80}]},
    }


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 5.0) -> T:
    """Poll ``probe`` until it returns a value; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def status_ip(server: RunningServer, path: str) -> str:
    def probe() -> str | None:
        with server.client() as c:
            r = c.get(path)
            return (r.json().get("status") or {}).get("ip") if r.status_code == 200 else None

    return eventually(probe, f"status.ip of {path}")


def dig(port: int, name: str, at: str = "127.0.0.1") -> tuple[str, list[str]]:
    """(rcode, answers) of an A query to the server's DNS, as dig prints them."""
    out = subprocess.run(
        ["dig", f"@{at}", "-p", str(port), name, "A", "+tries=1", "+time=2", "+noall",
         "+comments", "+answer"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    rcode = out.split("status: ", 1)[1].split(",", 1)[0] if "status: " in out else "?"
    answers = [line.split()[-1] for line in out.splitlines() if line and not line.startswith(";")]
    return rcode, answers


def dns_port(server: RunningServer) -> int:
    assert server.plane.mesh is not None
    return server.plane.mesh.dns_port


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (dnsutils) is not installed")
def test_dns_answers_for_an_app_created_through_the_api_and_forgets_it(
    server: RunningServer,
) -> None:
    make_team(server, "acme")
    with server.client() as c:
        assert c.post(APPS, json=app_doc("api")).status_code == 201
    port = dns_port(server)
    name = "api.dev.acme.kled.internal"

    def answered() -> list[str] | None:
        rcode, answers = dig(port, name)
        return answers if rcode == "NOERROR" and answers else None

    answers = eventually(answered, f"an answer for {name}")
    assert answers == [status_ip(server, f"{APPS}/api")]
    assert answers[0].startswith("100.")
    with server.client() as c:
        assert c.delete(f"{APPS}/api").status_code == 200
    eventually(lambda: True if dig(port, name)[0] == "NXDOMAIN" else None, f"NXDOMAIN for {name}")


def test_a_team_with_an_overlapping_or_malformed_block_is_refused_and_not_stored(
    server: RunningServer,
) -> None:
    make_team(server, "acme", block="100.70.0.0/16")
    with server.client() as admin:
        for block in ("100.70.128.0/17", "10.0.0.0/8", "100.70.0.0/33"):
            r = admin.post(
                "/api/v1/teams", json={"metadata": {"name": "beta"}, "spec": {"block": block}}
            )
            assert r.status_code == 422, (block, r.text)
            assert r.json()["field"] == "spec.block", r.json()
            assert admin.get("/api/v1/teams/beta").status_code == 404
        overlap = admin.post(
            "/api/v1/teams", json={"metadata": {"name": "beta"}, "spec": {"block": "100.70.0.0/17"}}
        )
        assert "overlaps 100.70.0.0/16 of team acme" in overlap.json()["message"]
        # A free block is taken, and the team's own block can be restated on update.
        r = admin.post(
            "/api/v1/teams", json={"metadata": {"name": "beta"}, "spec": {"block": "100.71.0.0/16"}}
        )
        assert r.status_code == 201, r.text
        team = admin.get("/api/v1/teams/acme").json()
        assert admin.put("/api/v1/teams/acme", json=team).status_code == 200
        team["spec"]["block"] = "100.72.0.0/16"
        moved = admin.put("/api/v1/teams/acme", json=team)
        assert moved.status_code == 422 and moved.json()["field"] == "spec.block"


def test_the_ips_routes_list_every_allocation_to_those_allowed(server: RunningServer) -> None:
    make_team(server, "acme")
    make_team(server, "beta")
    ada = make_user(server, "acme", "ada", "member")
    bob = make_user(server, "beta", "bob", "member")
    with server.client(ada) as c:
        assert c.post(APPS, json=app_doc("api")).status_code == 201
        r = c.post(
            "/api/v1/teams/acme/devices",
            json={"metadata": {"name": "laptop"}, "spec": {"owner": "ada"}},
        )
        assert r.status_code == 201, r.text
    app_ip = status_ip(server, f"{APPS}/api")
    device_ip = status_ip(server, "/api/v1/teams/acme/devices/laptop")
    with server.client(ada) as c:
        items = c.get("/api/v1/teams/acme/ips").json()["items"]
        assert c.get("/api/v1/ips").status_code == 403
    owners = {(i["pool"], i["owner"]): i["address"] for i in items}
    assert owners[("service", "App/dev/api")] == app_ip
    assert owners[("mesh", "Device/laptop")] == device_ip
    assert ("block", "Team/acme") in owners
    assert {i["team"] for i in items} == {"acme"}
    with server.client(bob) as c:
        assert c.get("/api/v1/teams/acme/ips").status_code == 404
    with server.client() as admin:
        everything = admin.get("/api/v1/ips").json()["items"]
    assert {i["team"] for i in everything} == {"acme", "beta"}


def _report_node_key(server: RunningServer, node: str, team: str, public_key: str) -> None:
    """What an agent does once its team gateway is up: report the key and port."""

    def attempt() -> bool | None:
        with server.client() as admin:
            doc = admin.get(f"/api/v1/nodes/{node}").json()
            mesh = (doc.get("status") or {}).get("mesh") or {}
            if team not in mesh:
                return None
            mesh[team].update(publicKey=public_key, listenPort=16384)
            body = {"status": doc["status"], "metadata": doc["metadata"]}
            r = admin.put(f"/api/v1/nodes/{node}/status", json=body)
            return True if r.status_code == 200 else None

    eventually(attempt, f"node/{node}'s status in team {team}")


def test_a_device_gets_its_wireguard_config_only_for_its_owner_and_admins(
    server: RunningServer,
) -> None:
    make_team(server, "acme")
    make_team(server, "beta")
    ada = make_user(server, "acme", "ada", "member")
    eve = make_user(server, "acme", "eve", "member")
    root = make_user(server, "acme", "root", "admin")
    bob = make_user(server, "beta", "bob", "owner")
    with server.client() as admin:
        r = admin.post(
            "/api/v1/nodes", json={"metadata": {"name": "n1"}, "spec": {"address": "198.18.0.1"}}
        )
        assert r.status_code == 201, r.text
    _report_node_key(server, "n1", "acme", key(1))
    with server.client(ada) as c:
        r = c.post(
            "/api/v1/teams/acme/devices",
            json={"metadata": {"name": "laptop"}, "spec": {"owner": "ada", "publicKey": key(9)}},
        )
        assert r.status_code == 201, r.text
    device_ip = status_ip(server, "/api/v1/teams/acme/devices/laptop")
    path = "/api/v1/teams/acme/devices/laptop/wireguard"

    def with_peer() -> dict[str, Any] | None:
        with server.client(ada) as c:
            r = c.get(path)
            return r.json() if r.status_code == 200 and r.json()["peers"] else None

    config = eventually(with_peer, "the device's config with the node as peer")
    assert config["address"] == f"{device_ip}/32"
    assert config["publicKey"] == key(9)
    assert config["zone"] == "acme.kled.internal"
    assert config["searchDomains"] == ["acme.kled.internal"]
    assert config["dns"] == f"127.0.0.1:{dns_port(server)}"
    with server.client() as admin:
        team_block = admin.get("/api/v1/teams/acme").json()["status"]["block"]
        node_ip = admin.get("/api/v1/nodes/n1").json()["status"]["mesh"]["acme"]["ip"]
    assert config["block"] == team_block
    [peer] = config["peers"]
    assert peer["publicKey"] == key(1)
    assert peer["endpoint"] == "198.18.0.1:16384"
    assert f"{node_ip}/32" in peer["allowedIPs"]
    # The node is the team's gateway for devices, so it carries the service range too.
    assert len(peer["allowedIPs"]) == 3
    with server.client(root) as c:
        assert c.get(path).json()["address"] == config["address"]
    with server.client(eve) as c:
        assert c.get(path).status_code == 403
    with server.client(bob) as c:
        assert c.get(path).status_code == 404
    # Revoking the device is deleting it: its config is gone, the address is freed.
    with server.client(ada) as c:
        assert c.delete("/api/v1/teams/acme/devices/laptop").status_code == 200
        assert c.get(path).status_code == 404

    def freed() -> bool | None:
        with server.client() as admin:
            items = admin.get("/api/v1/teams/acme/ips").json()["items"]
        return None if any(i["owner"] == "Device/laptop" for i in items) else True

    eventually(freed, "the device's address to be freed")


def test_a_restart_keeps_every_address(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "data"
    first = RunningServer(data, database_url).start()
    try:
        make_team(first, "acme")
        make_team(first, "beta", block="100.99.0.0/20")
        with first.client() as admin:
            for name in ("api", "web", "db"):
                assert admin.post(APPS, json=app_doc(name)).status_code == 201
            admin.post(
                "/api/v1/teams/acme/devices",
                json={"metadata": {"name": "laptop"}, "spec": {"owner": "admin"}},
            )
            admin.post(
                "/api/v1/nodes",
                json={"metadata": {"name": "n1"}, "spec": {"address": "198.18.0.1"}},
            )
        for name in ("api", "web", "db"):
            status_ip(first, f"{APPS}/{name}")
        status_ip(first, "/api/v1/teams/acme/devices/laptop")

        def settled() -> list[dict[str, Any]] | None:
            with first.client() as admin:
                items: list[dict[str, Any]] = admin.get("/api/v1/ips").json()["items"]
            # 2 blocks, 3 service IPs, the device, the node's mesh IP and pod subnet per team
            return items if len(items) == 2 + 3 + 1 + 2 * 2 else None

        before = eventually(settled, "every allocation")
        with first.client() as admin:
            assert admin.delete(f"{APPS}/web").status_code == 200
        before = [i for i in before if i["owner"] != "App/dev/web"]
        eventually(lambda: True if len(settled_list(first)) == len(before) else None, "web freed")
    finally:
        first.stop()
    second = RunningServer(data, database_url).start()
    try:
        assert settled_list(second) == before
        assert status_ip(second, f"{APPS}/api") == _addr(before, "App/dev/api")
        with second.client() as admin:
            assert admin.post(APPS, json=app_doc("cache")).status_code == 201
        fresh = status_ip(second, f"{APPS}/cache")
        assert fresh not in {i["address"] for i in before}
        assert [i for i in settled_list(second) if i["owner"] != "App/dev/cache"] == before
        if shutil.which("dig") is not None:
            answer = dig(dns_port(second), "api.dev.acme.kled.internal")[1]
            assert answer == [_addr(before, "App/dev/api")]
    finally:
        second.stop()


def settled_list(server: RunningServer) -> list[dict[str, Any]]:
    with server.client() as admin:
        items: list[dict[str, Any]] = admin.get("/api/v1/ips").json()["items"]
    return items


def _addr(items: list[dict[str, Any]], owner: str) -> str:
    [address] = [i["address"] for i in items if i["owner"] == owner]
    return str(address)


class RecordingSink:
    """Stands in for the Message Office: what each node would be sent."""

    def __init__(self) -> None:
        self.sent: dict[str, HostDesiredState] = {}

    async def put(self, node: str, state: HostDesiredState) -> None:
        self.sent[node] = state


def test_host_networks_follow_the_mesh_and_pod_ips_land_in_app_status(
    server: RunningServer,
) -> None:
    make_team(server, "acme")
    with server.client() as admin:
        r = admin.post(
            "/api/v1/nodes", json={"metadata": {"name": "n1"}, "spec": {"address": "198.18.0.1"}}
        )
        assert r.status_code == 201, r.text
        assert admin.post(APPS, json=app_doc("api")).status_code == 201
    app_ip = status_ip(server, f"{APPS}/api")
    mesh = server.plane.mesh
    loop = server._loop
    assert mesh is not None and loop is not None
    sink = RecordingSink()

    async def wire() -> None:
        composer = mesh.compose(sink)
        replica = ReplicaSpec(team="acme", environment="dev", app="api", index=0, command=["x"])
        await composer.put("n1", HostDesiredState(node="n1", replicas=[replica]))

    asyncio.run_coroutine_threadsafe(wire(), loop).result(10)

    def network() -> HostNetwork | None:
        assert mesh.composer is not None
        net = mesh.composer.networks.get("n1")
        return net if net is not None and net.teams and net.teams[0].services else None

    net = eventually(network, "node n1's network")
    [team] = net.teams
    with server.client() as admin:
        node_mesh = admin.get("/api/v1/nodes/n1").json()["status"]["mesh"]["acme"]
    assert (team.mesh_ip, team.pod_subnet) == (node_mesh["ip"], node_mesh["podSubnet"])
    # Told the DNS server at the address node n1 reaches this machine at, where it answers.
    local = route_source("198.18.0.1") or "127.0.0.1"
    host, _, port = (team.dns_server or "").rpartition(":")
    assert host == local
    if shutil.which("dig"):
        assert dig(int(port), "api.dev.acme.kled.internal", at=host) == ("NOERROR", [app_ip])
    [svc] = team.services
    assert svc.ip == app_ip
    [pod] = net.pods
    # The pod has its address, but serves only once an agent reports it Running (as ready
    # endpoints in Kubernetes); no agent runs here (tests/unit/test_hostnet.py has the rest).
    assert pod.replica_id == "acme.dev.api.0" and svc.backends == ()
    # What the Message Office would carry to node n1: its replicas with this network.
    sent = eventually(lambda: sink.sent.get("n1") if sink.sent["n1"].network else None, "n1")
    assert sent.network == net and [r.app for r in sent.replicas] == ["api"]

    def recorded() -> dict[str, str] | None:
        with server.client() as admin:
            status = admin.get(f"{APPS}/api").json().get("status") or {}
        ips: dict[str, str] | None = status.get("podIPs")
        return ips or None

    assert eventually(recorded, "App.status.podIPs") == {"0": pod.ip}


def test_the_servers_zone_names_teams_that_keep_the_default(tmp_path: Path) -> None:
    running = RunningServer(tmp_path / "data", None, zone="corp.test").start()
    try:
        make_team(running, "acme")
        make_team(running, "beta", zone="beta.example")
        with running.client() as c:
            assert c.post(APPS, json=app_doc("api")).status_code == 201

            def dns_name() -> str | None:
                status = c.get(f"{APPS}/api").json().get("status") or {}
                return status.get("dns")

            assert eventually(dns_name, "status.dns of the app") == "api.dev.acme.corp.test"
            assert c.get("/api/v1/teams/acme").json()["status"]["zone"] == "acme.corp.test"
            assert c.get("/api/v1/teams/beta").json()["status"]["zone"] == "beta.beta.example"
    finally:
        running.stop()
