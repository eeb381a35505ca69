"""A host on the underlay is told the control plane's DNS at an address it can reach.

The control plane's DNS listens on loopback by default, out of reach of any other host.
A node is a network namespace here, joined to this machine by a veth pair on the underlay
(198.18.0.0/15), as a second host would be; its HostNetwork must name the DNS server at
this machine's end of that link, and a query sent from inside the namespace to that
address must be answered with the app's address.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_mesh_api import APPS, RecordingSink, app_doc, eventually, make_team, status_ip

from kled.resources.hoststate import HostDesiredState, ReplicaSpec
from kled.resources.netstate import HostNetwork
from servers import RunningServer

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("dig") is None,
    reason="needs root, iproute2 and dig to build a second host in a network namespace",
)

HERE, THERE = "198.18.231.1", "198.18.231.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def remote_host() -> Iterator[str]:
    """A namespace at THERE, linked to this machine's HERE; its name."""
    ns, veth = f"kdnsr{os.getpid()}", f"kdr{os.getpid()}"
    try:
        ip("netns", "add", ns)
        ip("link", "add", f"{veth}a", "type", "veth", "peer", "name", f"{veth}b")
        ip("link", "set", f"{veth}b", "netns", ns)
        ip("addr", "add", f"{HERE}/30", "dev", f"{veth}a")
        ip("link", "set", f"{veth}a", "up")
        ip("-n", ns, "addr", "add", f"{THERE}/30", "dev", f"{veth}b")
        ip("-n", ns, "link", "set", f"{veth}b", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", f"{veth}a"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def dig_from(ns: str, server: str, name: str) -> str:
    host, _, port = server.rpartition(":")
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "dig", f"@{host}", "-p", port, name, "A", "+short",
         "+tries=1", "+time=2"],
        capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    return done.stdout.strip()


def test_a_node_on_the_underlay_reaches_the_dns_at_the_address_it_is_given(
    tmp_path: Path, remote_host: str
) -> None:
    running = RunningServer(tmp_path / "data", None).start()
    try:
        assert running.plane.mesh is not None
        mesh = running.plane.mesh
        assert mesh.dns is not None and mesh.dns.listen[0] == "127.0.0.1"  # the default
        make_team(running, "acme")
        with running.client() as admin:
            node = {"metadata": {"name": "far"}, "spec": {"address": THERE}}
            assert admin.post("/api/v1/nodes", json=node).status_code == 201
            assert admin.post(APPS, json=app_doc("api")).status_code == 201
        app_ip = status_ip(running, f"{APPS}/api")
        loop = running._loop
        assert loop is not None

        async def wire() -> None:
            composer = mesh.compose(RecordingSink())
            replica = ReplicaSpec(team="acme", environment="dev", app="api", index=0, command=["x"])
            await composer.put("far", HostDesiredState(node="far", replicas=[replica]))

        asyncio.run_coroutine_threadsafe(wire(), loop).result(10)

        def network() -> HostNetwork | None:
            net = mesh.composer.networks.get("far") if mesh.composer else None
            return net if net is not None and net.teams else None

        [team] = eventually(network, "node far's network", timeout=15).teams
        assert team.dns_server == f"{HERE}:{mesh.dns_port}"
        name = "api.dev.acme.kled.internal"
        assert dig_from(remote_host, team.dns_server, name) == app_ip
        # What it would have been told before: loopback, which is its own, not ours.
        assert dig_from(remote_host, mesh.dns_address(), name) != app_ip
    finally:
        running.stop()
