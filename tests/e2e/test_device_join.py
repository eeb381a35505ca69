"""``kled device join`` on a machine standing in for a laptop reaches a team's app by name.

Host 1 runs a real agent (registered with a join token) and the app's replica; host 2 is
the laptop: ``kled device join`` runs inside its network namespace as the team member alice,
generates the key there, registers only the public key, brings up its WireGuard interface
and route; then the app's name, asked of the team's DNS server, gives its service IP, and
the service answers over the mesh. ``kled device leave`` takes it all away again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from netlab import PROBE, Lab, make_lab, sh

from kled.agent.net import device
from kled.api.server import ControlPlane
from servers import RunningServer

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("netns")]

SERVER_IP = "198.18.0.254"
TEAM_A_BLOCK = "100.90.0.0/16"
#: set in every app of the test, so that teardown finds the replicas (they outlive agents)
MARKER_VAR = "KLED_TEST_MARKER"
KLED = Path(sys.executable).parent / "kled"


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
    """The lab, the control plane on the underlay (``SERVER_IP``), and one agent on host 1."""

    def __init__(self, lab: Lab, root: Path, server: RunningServer, marker: str) -> None:
        self.lab, self.root, self.server, self.marker = lab, root, server, marker
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""

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

    def start_agent(self, i: int) -> None:
        name, host = f"node{i}", self.lab.host(i)
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        args = [
            # nsenter, not `ip netns exec`: the agent's namespaces must be visible outside.
            "nsenter", f"--net=/run/netns/{host}", sys.executable, "-m", "kled.agent",
            "--data-dir", str(self.root / name), "--name", name, "--host-id", host,
            "--heartbeat", "1", "--network", "on", "--log-level", "info",
            "--server", self.server.url, "--token", self.token,
        ]  # fmt: skip
        self.agents[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def close(self) -> None:
        for proc in self.agents.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        procs = [
            p
            for p in psutil.process_iter(["environ"])
            if (p.info["environ"] or {}).get(MARKER_VAR) == self.marker
        ]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=10)

    def pod_ns(self, host: int, team: str, replica_id: str) -> str:
        return f"kp-{self.lab.host(host)}.{team}.{replica_id}"

    def ask(self, ns: str, ip: str, port: int, count: int) -> list[str]:
        return asyncio.run(self.lab.ask(ns, "tcp", ip, port, count=count, timeout=2.0))

    def dump_logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + path.read_text(errors="replace")[-6000:]
            for path in sorted(self.root.glob("node*.log"))
        )


@contextlib.contextmanager
def root_port(lab: Lab) -> Iterator[None]:
    """A veth from the root namespace onto the underlay bridge, at ``SERVER_IP``."""
    ifname = f"kx-{lab.run}-r"
    sh("ip", "link", "add", ifname, "type", "veth", "peer", "name", "r0", "netns", lab.underlay)
    try:
        sh("ip", "-n", lab.underlay, "link", "set", "r0", "master", "ul0", "up")
        sh("ip", "addr", "add", f"{SERVER_IP}/24", "dev", ifname)
        sh("ip", "link", "set", ifname, "up")
        yield
    finally:
        sh("ip", "link", "del", ifname, check=False)


def make_server(root: Path) -> RunningServer:
    server = RunningServer(root / "server", None, embedded_nats=True, dns_listen=f"{SERVER_IP}:0")
    # The agents and the laptop reach the API, NATS and DNS across the underlay.
    server.settings = server.settings.model_copy(update={"listen": f"{SERVER_IP}:0"})
    server.plane = ControlPlane(server.settings)
    return server


def serve_cmd() -> list[str]:
    # Each replica answers with its own pid, so that answers tell replicas apart.
    return ["sh", "-c", f'exec {sys.executable} {PROBE} serve "api-$$" 0.0.0.0 8080 8081']


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    marker = f"devjoin-{secrets.token_hex(6)}"
    with make_lab(2, tmp_path / "lab") as lab, root_port(lab):
        server = make_server(tmp_path)
        m = Mesh(lab, tmp_path, server, marker)
        try:
            server.start()
            m.token = m.api("POST", "/api/v1/node-tokens", {"ttl": "1h"})["token"]
            yield m
        finally:
            m.close()
            server.stop()


def laptop_kled(mesh: Mesh, home: Path, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLED_")}
    env.update(HOME=str(home), KLED_CONFIG=str(home / "kled.yaml"), NO_COLOR="1")
    env.update(XDG_DATA_HOME=str(home / "data"), WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
    argv = ["ip", "netns", "exec", mesh.lab.host(2), str(KLED)]
    argv += ["--server", mesh.server.url, "--token", token, "--team", "a", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


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
    mesh.lab.ifnames.add(device.device_ifname("a", "laptop"))
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
        assert dns_ip == SERVER_IP
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
    it to the laptop's process; `stop` (and the laptop leaving) returns it to the replica."""
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
    mesh.lab.ifnames.add(device.device_ifname("a", "laptop"))

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
        assert eventually(lambda: lands("laptop"), "the laptop answering instead")
        stopped = laptop_kled(mesh, home, token, "intercept", "stop", "api", "-e", "dev")
        assert stopped.returncode == 0, stopped.stderr
        assert eventually(lambda: lands("api-"), "the replica answering again")
    except BaseException:
        print(mesh.dump_logs())
        raise
