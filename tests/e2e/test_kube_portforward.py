"""``kubectl port-forward`` to a Kled Cluster's pod run by a real agent on another host.

The control plane runs in one lab host, the agent in another; kubectl runs in the server's
host with kubeconfigs the cluster API issues. A Deployment's pod (process runtime) serves
a page on 8080 and an echo on [::1]:9090; ``kubectl port-forward pod/…|deploy/…|svc/…
0:PORT`` opens a local port whose connections reach it through the SPDY session the
control plane serves and the agent's exec link, one after the other and several at once,
with kubectl 1.27 and 1.30 (SPDY on the upgraded connection) and 1.32 and 1.33 (SPDY in a
WebSocket), and 4 MiB each way intact. A port nothing listens on is kubectl's usual
``error forwarding port`` message; a pod that does not exist is 404, and a user with the
view role is refused.
"""

from __future__ import annotations

import json
import queue
import re
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from agentlab import MARKER_VAR, Mesh, eventually, lab_mesh
from kubelab import cluster_kubectl, create_cluster

from imagekit import busybox_image, podman
from kubekit import Kubectl, kubectl_binary

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]


#: the pod: a page on 127.0.0.1:8080, and an echo on [::1]:9090 only (the relay's IPv6 try)
POD = r"""
import http.server, functools, socket, sys, threading
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
server = socket.create_server(("::1", 9090), family=socket.AF_INET6)
def accept():
    while True:
        threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), handler).serve_forever()
"""

#: in the host kubectl runs in: send argv[2] random bytes to port argv[1], compare the echo
ECHO_CLIENT = r"""
import hashlib, os, socket, sys, threading
payload = os.urandom(int(sys.argv[2]))
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def send():
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)
threading.Thread(target=send).start()
got = bytearray()
while data := conn.recv(65536):
    got += data
print(len(got), hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest())
"""


def _manifest(marker: str, site: Path, script: Path) -> str:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"kled.io/runtime": "process"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "python:3",
                            "command": [sys.executable, str(script), str(site)],
                            "env": [{"name": MARKER_VAR, "value": marker}],
                            "ports": [{"containerPort": 8080, "name": "http"},
                                      {"containerPort": 9090, "name": "echo"}],
                        }
                    ]
                },
            },
        },
    }  # fmt: skip
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "front"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [deployment, service]})


class Forward:
    """A running ``kubectl port-forward``, its local port and what it printed."""

    def __init__(self, k: Kubectl, *args: str) -> None:
        self.proc = k.popen("port-forward", *args)
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()
        self.port = 0
        try:
            while not self.port:
                line = self.lines.get(timeout=60)
                if line.startswith("Forwarding from 127.0.0.1:"):
                    self.port = int(line.split(":", 1)[1].split()[0])
        except queue.Empty:
            self.close()
            raise AssertionError(f"kubectl port-forward never listened: {self.errors}") from None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line.strip())

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _curl(netns: str, port: int, count: int = 1) -> list[subprocess.CompletedProcess[str]]:
    """``count`` GETs of the forwarded port at once, from the host kubectl runs in."""
    argv = ["ip", "netns", "exec", netns, "curl", "-sS", "-m", "30"]
    procs = [
        subprocess.Popen(
            [*argv, f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _serving(k: Kubectl, netns: str, target: str, expected: str) -> None:
    """Wait until a first forward to ``target``'s 8080 answers ``expected`` (kubectl ends a
    forward at the first failed connection, so each try is a new one)."""

    def answers() -> bool:
        forward = Forward(k, target, "0:8080")
        try:
            return _curl(netns, forward.port)[0].stdout == expected
        finally:
            forward.close()

    eventually(answers, f"{target} serving through a forward", attempts=60)


def _pods(k: Kubectl) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(k.ok("get", "pods", "-o", "json"))["items"]
    return items


def _ready(pod: dict[str, Any]) -> bool:
    """Ready, with its pod IP."""
    conditions = pod.get("status", {}).get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return ready and bool(pod.get("status", {}).get("podIP"))


def test_kubectl_port_forward_reaches_a_pod_on_another_host(tmp_path: Path) -> None:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    with lab_mesh(tmp_path, 1, "kubepf") as mesh:
        try:
            _scenario(mesh, tmp_path)
        except BaseException:
            print(mesh.dump_logs())
            raise


def _scenario(mesh: Mesh, tmp_path: Path) -> None:
    mesh.start_agent(1)
    mesh.team("a", "100.97.0.0/16")
    create_cluster(mesh, users={"vic": "view"})
    netns = mesh.lab.host(2)
    admin_config = cluster_kubectl(mesh, tmp_path / "admin").kubeconfig
    viewer_config = cluster_kubectl(mesh, tmp_path / "vic", user="vic").kubeconfig
    binary = kubectl_binary()
    assert binary is not None
    k = Kubectl(binary, admin_config, tmp_path / "home", netns=netns)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(f"hello from {mesh.marker}\n")
    (site / "big.bin").write_bytes(bytes(range(256)) * 16384)  # 4 MiB
    script = tmp_path / "pod.py"
    script.write_text(POD)
    manifest = tmp_path / "web.json"
    manifest.write_text(_manifest(mesh.marker, site, script))
    k.ok("apply", "-f", str(manifest))
    eventually(lambda: [p for p in _pods(k) if _ready(p)], "a Ready pod")
    pod = _pods(k)[0]["metadata"]["name"]
    _serving(k, netns, f"pod/{pod}", f"hello from {mesh.marker}\n")
    # The replica was placed before the team had addresses on the node: it waited for its
    # pod and started once, in it (it used to start outside and be restarted into it).
    log = (mesh.root / "node1.log").read_text().splitlines()
    starts = [line for line in log if re.search(r"c1-default\.web\.0 (re)?start:", line)]
    assert len(starts) == 1, starts

    # kubectl 1.31+ tunnels SPDY in a WebSocket; 1.27-1.30 upgrade the connection itself
    # (the kubectl on the PATH is google-cloud-cli's dispatcher: it runs the kubectl of the
    # server's version, 1.30)
    targets = {"1.27": f"pod/{pod}", "1.30": "deploy/web", "1.32": f"pod/{pod}",
               "1.33": "deploy/web"}  # fmt: skip
    for version, target in targets.items():
        found = kubectl_binary(version)
        if found is None:
            continue
        kv = Kubectl(found, admin_config, tmp_path / f"home-{version}", netns=netns)
        forward = Forward(kv, target, "0:8080")
        try:
            for _ in range(3):  # one after the other: a stream pair each, one session
                (done,) = _curl(netns, forward.port)
                assert done.returncode == 0, (version, done.stderr, forward.errors)
                assert done.stdout == f"hello from {mesh.marker}\n"
            together = _curl(netns, forward.port, 6)
            assert [d.stdout for d in together] == [f"hello from {mesh.marker}\n"] * 6, [
                (d.returncode, d.stderr) for d in together
            ]
        finally:
            forward.close()

    # 4 MiB each way at once through an echo that listens on [::1] only, and 4 MiB down
    forward = Forward(k, f"pod/{pod}", "0:9090")
    try:
        size = 4 << 20
        echoed = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", ECHO_CLIENT,
             str(forward.port), str(size)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert echoed.stdout.split() == [str(size), "True"], (echoed.stderr, forward.errors)
    finally:
        forward.close()
    forward = Forward(k, f"pod/{pod}", "0:8080")
    try:
        fetched = subprocess.run(
            ["ip", "netns", "exec", netns, "curl", "-sS", "-m", "60",
             f"http://127.0.0.1:{forward.port}/big.bin"],
            capture_output=True, timeout=120,
        )  # fmt: skip
        assert fetched.stdout == (site / "big.bin").read_bytes(), fetched.stderr
    finally:
        forward.close()

    # svc/NAME: kubectl picks a pod of the Service and its targetPort
    forward = Forward(k, "svc/front", "0:80")
    try:
        (done,) = _curl(netns, forward.port)
        assert done.stdout == f"hello from {mesh.marker}\n", (done.stderr, forward.errors)
    finally:
        forward.close()

    # a port nothing listens on: the connection fails with kubelet's words, and kubectl
    # (every version here) then ends the whole forward, as it does against a kubelet
    forward = Forward(k, f"pod/{pod}", "0:9")
    try:
        (done,) = _curl(netns, forward.port)
        assert done.returncode != 0 and not done.stdout
        assert forward.proc.wait(30) == 1
        eventually(lambda: "error: lost connection to pod" in forward.errors, "kubectl's end")
        (error,) = [e for e in forward.errors if "error forwarding port 9" in e]
        assert f"to pod {pod}, uid " in error
        assert "failed to connect to localhost:9 inside the pod" in error
        assert "connect: connection refused" in error
    finally:
        forward.close()

    # a pod that does not exist; a user who may only view
    missing = k("port-forward", "pod/nope", "0:8080")
    assert missing.returncode != 0 and 'pods "nope" not found' in missing.stderr
    viewer = Kubectl(binary, viewer_config, tmp_path / "home-vic", netns=netns)
    refused = viewer("port-forward", f"pod/{pod}", "0:8080")
    assert refused.returncode != 0
    assert f'pods "{pod}" is forbidden: User "vic" cannot create resource "pods/portforward"' in (
        refused.stderr
    ), refused.stderr


def test_kubectl_port_forward_into_a_container_that_has_no_python(tmp_path: Path) -> None:
    """A busybox container (podman) joined to its pod's network namespace: the agent
    connects inside it itself, so nothing is needed in the image."""
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    image = f"localhost/kled-test-kpf:{secrets.token_hex(4)}"
    busybox_image(tmp_path / "image", image, ("sh", "mkdir", "httpd"))
    try:
        with lab_mesh(tmp_path, 1, "kubepfc") as mesh:
            try:
                _container_scenario(mesh, tmp_path, image)
            except BaseException:
                print(mesh.dump_logs())
                raise
            finally:
                mesh.api("DELETE", "/api/v1/teams/a/clusters/c1")
    finally:
        podman("rmi", "-f", image)


def _container_scenario(mesh: Mesh, tmp_path: Path, image: str) -> None:
    mesh.start_agent(1)
    mesh.team("a", "100.97.0.0/16")
    mesh.api("POST", "/api/v1/teams/a/clusters", {"kind": "Cluster", "metadata": {"name": "c1"}})
    netns = mesh.lab.host(2)
    config = cluster_kubectl(mesh, tmp_path / "admin").kubeconfig
    serve = "mkdir -p /srv && echo from-box > /srv/index.html && exec httpd -f -p 8080 -h /srv"
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "box"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "box"}},
                 "template": {"metadata": {"labels": {"app": "box"}}, "spec": {
                     "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "box", "image": image,
                                     "command": ["sh", "-c", serve],
                                     "env": [{"name": MARKER_VAR, "value": mesh.marker}]}]}}},
    }  # fmt: skip
    binary = kubectl_binary()
    assert binary is not None
    k = Kubectl(binary, config, tmp_path / "home", netns=netns)
    k.ok("apply", "-f", "-", stdin=json.dumps(deployment))
    eventually(lambda: [p for p in _pods(k) if _ready(p)], "a Ready pod")
    pod = _pods(k)[0]["metadata"]["name"]
    _serving(k, netns, f"pod/{pod}", "from-box\n")
    for version in ("1.30", "1.33"):  # SPDY on the upgraded connection; in a WebSocket
        found = kubectl_binary(version)
        if found is None:
            continue
        kv = Kubectl(found, config, tmp_path / f"home-{version}", netns=netns)
        forward = Forward(kv, f"pod/{pod}", "0:8080")
        try:
            together = _curl(netns, forward.port, 3)
            assert [d.stdout for d in together] == ["from-box\n"] * 3, [
                (d.returncode, d.stderr, forward.errors) for d in together
            ]
        finally:
            forward.close()
