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

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from netlab import PROBE, Lab, make_lab, sh

from kled.api.server import ControlPlane
from servers import RunningServer

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("netns")]

CLONE_NEWNET = 0x40000000
TEAM_A_BLOCK = "100.90.0.0/16"
TEAM_B_BLOCK = "100.91.0.0/16"
#: set in every app of the test, so that teardown finds the replicas (they outlive agents)
MARKER_VAR = "KLED_TEST_MARKER"


def eventually(check: Callable[[], Any], what: str, attempts: int = 240) -> Any:
    """Poll ``check`` until it returns something truthy; a count of tries guards a hang."""
    last: Any = None
    for _ in range(attempts):
        try:
            last = check()
        except (AssertionError, KeyError, IndexError, TypeError, OSError, ValueError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"never happened: {what} (last: {last!r})")


class Mesh:
    """The lab, the control plane on the underlay, and the agents of the test."""

    def __init__(self, lab: Lab, root: Path, server: RunningServer, marker: str) -> None:
        self.lab = lab
        self.root = root
        self.server = server
        self.marker = marker
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""

    # -- the control plane ------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None) -> Any:
        with self.server.client() as c:
            r = c.request(method, path, json=body)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def team(self, name: str, block: str) -> None:
        self.api("POST", "/api/v1/teams", {"metadata": {"name": name}, "spec": {"block": block}})
        self.api("POST", f"/api/v1/teams/{name}/environments", {"metadata": {"name": "dev"}})

    def app(self, team: str, name: str, spec: dict[str, Any]) -> None:
        spec = {**spec, "env": {MARKER_VAR: self.marker}}
        doc = {"apiVersion": "kled.io/v1", "kind": "App", "metadata": {"name": name}, "spec": spec}
        self.api("POST", f"/api/v1/teams/{team}/environments/dev/apps", doc)

    def get_app(self, team: str, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.api("GET", f"/api/v1/teams/{team}/environments/dev/apps/{name}")
        return doc

    def node(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.api("GET", f"/api/v1/nodes/{name}")
        return doc

    # -- agents ---------------------------------------------------------------------------
    def start_agent(self, i: int) -> None:
        name, host = f"node{i}", self.lab.host(i)
        data = self.root / name
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        args = [
            # nsenter, not `ip netns exec`: that one gives the agent a mount namespace of
            # its own, and the namespaces it then creates would be invisible outside it.
            "nsenter", f"--net=/run/netns/{host}", sys.executable, "-m", "kled.agent",
            "--data-dir", str(data), "--name", name, "--labels", f"lab.kled.io/node={name}",
            "--host-id", host, "--heartbeat", "1", "--network", "on", "--log-level", "info",
        ]  # fmt: skip
        args += ["--server", self.server.url, "--token", self.token]
        self.agents[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def kill_agent(self, name: str) -> None:
        proc = self.agents.pop(name)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait()

    def replicas(self) -> list[psutil.Process]:
        """Replica processes of this test (they outlive agents by design)."""
        found = []
        for p in psutil.process_iter(["environ"]):
            if (p.info["environ"] or {}).get(MARKER_VAR) == self.marker:
                found.append(p)
        return found

    def close(self) -> None:
        for name in list(self.agents):
            self.kill_agent(name)
        procs = self.replicas()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=10)

    # -- asking from inside a pod -------------------------------------------------------------
    def pod_ns(self, host: int, team: str, replica_id: str) -> str:
        return f"kp-{self.lab.host(host)}.{team}.{replica_id}"

    def ask(self, ns: str, ip: str, port: int, count: int) -> list[str]:
        return asyncio.run(self.lab.ask(ns, "tcp", ip, port, count=count, timeout=2.0))

    def resolve(self, ns: str, name: str) -> str:
        code = f"import socket; print(socket.gethostbyname({name!r}))"
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def dump_logs(self) -> str:
        out = []
        for path in sorted(self.root.glob("node*.log")):
            out.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-6000:])
        return "\n".join(out)


class LabServer(RunningServer):
    """The control plane with every socket (API, NATS, DNS) inside a lab host.

    Its thread enters the host's network namespace before it starts, and what it starts
    (the embedded nats-server, executor threads) inherits it; the test talks to it over its
    Unix socket, which a path names on any namespace. Nothing is added to the root
    namespace, so concurrent labs on one machine never compete for an address there.
    """

    def __init__(self, netns: str, data_dir: Path, ip: str) -> None:
        super().__init__(data_dir, None, embedded_nats=True, dns_listen=f"{ip}:0")
        self.settings = self.settings.model_copy(update={"listen": f"{ip}:0"})
        self.plane = ControlPlane(self.settings)
        self.netns = netns

    def _run(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                self._error = OSError(ctypes.get_errno(), f"cannot enter {self.netns}")
                self._ready.set()
                return
        finally:
            os.close(fd)
        super()._run()

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url="http://kled",
            transport=httpx.HTTPTransport(uds=str(self.settings.socket_path())),
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=30,
        )


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    marker = f"meshtest-{secrets.token_hex(6)}"
    with make_lab(3, tmp_path / "lab") as lab:
        # Host 3 is the control plane's machine; hosts 1 and 2 run agents.
        server = LabServer(lab.host(3), tmp_path / "server", lab.underlay_ip(3))
        m = Mesh(lab, tmp_path, server, marker)
        try:
            server.start()
            m.token = m.api("POST", "/api/v1/node-tokens", {"ttl": "1h"})["token"]
            yield m
        finally:
            m.close()
            server.stop()


def serve_cmd() -> list[str]:
    # Each replica answers with its own pid, so that answers tell replicas apart.
    return ["sh", "-c", f'exec {sys.executable} {PROBE} serve "api-$$" 0.0.0.0 8080 8081']


IDLE_CMD = ["sleep", "100000"]


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
