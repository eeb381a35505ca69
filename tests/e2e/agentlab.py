"""A real control plane and real agents on namespace hosts, shared by the agent e2e tests.

``netlab`` gives the hosts; this module puts Kled on them (``lab_mesh``): the control plane
(a ``RunningServer`` with its embedded NATS, inside a lab host of its own: ``LabServer``),
agents started inside their hosts with a join token (``Mesh.start_agent``), and the ``kled``
CLI run inside a host standing in for a laptop (``laptop_kled``). Teardown kills the agents
and every replica the test started (they outlive agents by design, so each app carries
``MARKER_VAR``), even when the test failed. ``bench/intercept.py`` uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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
from netlab import PROBE, Lab, make_lab

from kled.api.server import ControlPlane
from kled.cli import devices
from servers import RunningServer

CLONE_NEWNET = 0x40000000
#: set in every app of the test, so that teardown finds the replicas (they outlive agents)
MARKER_VAR = "KLED_TEST_MARKER"
KLED = Path(sys.executable).parent / "kled"
IDLE_CMD = ["sleep", "100000"]


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


def serve_cmd() -> list[str]:
    # Each replica answers with its own pid, so that answers tell replicas apart.
    return ["sh", "-c", f'exec {sys.executable} {PROBE} serve "api-$$" 0.0.0.0 8080 8081']


class Mesh:
    """The lab, the control plane on the underlay, and the agents of the test."""

    def __init__(self, lab: Lab, root: Path, server: RunningServer, marker: str) -> None:
        self.lab = lab
        self.root = root
        self.server = server
        self.marker = marker
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""
        #: the control plane's address on the underlay (its API, NATS and DNS)
        self.server_ip = ""

    # -- the control plane ------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None) -> Any:
        with self.server.client() as c:
            r = c.request(method, path, json=body)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def team(self, name: str, block: str) -> None:
        self.api("POST", "/api/v1/teams", {"metadata": {"name": name}, "spec": {"block": block}})
        self.api("POST", f"/api/v1/teams/{name}/environments", {"metadata": {"name": "dev"}})

    def user_token(self, team: str, user: str) -> str:
        """A member ``user`` of ``team`` and an API token of theirs."""
        self.api("POST", f"/api/v1/teams/{team}/users", {"metadata": {"name": user}, "spec": {}})
        body = {"metadata": {"name": f"{user}-t"}, "spec": {"user": user}}
        token: str = self.api("POST", f"/api/v1/teams/{team}/tokens", body)["token"]
        return token

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
    def start_agent(self, i: int, *extra: str) -> None:
        """Start the agent of lab host ``i``; ``extra`` are more of its flags."""
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
        args += ["--server", self.server.url, "--token", self.token, *extra]
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

    def __init__(self, netns: str, data_dir: Path, ip: str, dns_port: int = 0) -> None:
        super().__init__(data_dir, None, embedded_nats=True, dns_listen=f"{ip}:{dns_port}")
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


@contextlib.contextmanager
def lab_mesh(root: Path, hosts: int, prefix: str, *, dns_port: int = 0) -> Iterator[Mesh]:
    """``hosts`` hosts for agents (and laptops), and one more for the control plane
    (its DNS on ``dns_port``, a free one by default).

    The server's host is the last one, ``hosts + 1``: its sockets live there, on the
    underlay at ``Mesh.server_ip``, so that labs running at once never share an address
    (nothing is added to the root namespace). Every agent, replica, namespace and
    interface is gone afterwards, even on failure.
    """
    marker = f"{prefix}-{secrets.token_hex(6)}"
    with make_lab(hosts + 1, root / "lab") as lab:
        server_ip = lab.underlay_ip(hosts + 1)
        server = LabServer(lab.host(hosts + 1), root / "server", server_ip, dns_port)
        m = Mesh(lab, root, server, marker)
        m.server_ip = server_ip
        try:
            server.start()
            m.token = m.api("POST", "/api/v1/node-tokens", {"ttl": "1h"})["token"]
            yield m
        finally:
            m.close()
            server.stop()


def laptop_ifname(home: Path, team: str = "a", name: str = "laptop") -> str:
    """The interface ``kled device join NAME`` makes for the ``laptop_kled`` of ``home``."""
    return devices.interface_name(team, name, str(home / "data"))


def laptop_kled(
    mesh: Mesh, home: Path, token: str, *args: str, host: int = 2
) -> subprocess.CompletedProcess[str]:
    """``kled … args`` run as a team member on lab host ``host`` (the laptop), in team a."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLED_")}
    env.update(HOME=str(home), KLED_CONFIG=str(home / "kled.yaml"), NO_COLOR="1")
    env.update(XDG_DATA_HOME=str(home / "data"), WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
    argv = ["ip", "netns", "exec", mesh.lab.host(host), str(KLED)]
    argv += ["--server", mesh.server.url, "--token", token, "--team", "a", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
