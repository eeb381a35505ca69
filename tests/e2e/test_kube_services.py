"""A Kled Cluster's Service reached by its ClusterIP and its names, on a real agent.

``kubectl apply`` of a Deployment ``web`` (an HTTP server), a Service ``front`` picking its
pods, a Service ``nobody`` picking none, and a ``client`` Deployment to ask from. From the
client pod (``kubectl exec``, in the pod's network and resolv.conf) the Service answers by
``front.default.svc.cluster.local``, ``front.default`` and the team-zone name
``front.default.c1.a.kled.internal``, all the ClusterIP the API gave it, through the
gateway to web's pod; ``nobody`` refuses. Once the Service is deleted its names no longer
resolve.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from agentlab import MARKER_VAR, Mesh, eventually, lab_mesh
from kubelab import cluster_kubectl

from kubekit import kubectl_binary

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

GET = (
    "import sys, urllib.request\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=3)\n"
    "    print(r.status)\n"
    "except Exception as e:\n"
    "    print('failed', type(e).__name__)\n"
)
RESOLVE = "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"


def _deployment(name: str, port: int, marker: str) -> dict[str, Any]:
    container = {
        "name": name,
        "image": "python:3",
        "command": [sys.executable, "-m", "http.server", str(port)],
        "env": [{"name": MARKER_VAR, "value": marker}],  # the lab stops what it marked
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"kled.io/runtime": "process"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container]},
            },
        },
    }


def _service(name: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": "http"}]},
    }


def test_a_cluster_service_is_reached_by_cluster_ip_and_by_name(tmp_path: Path) -> None:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    with lab_mesh(tmp_path, 1, "kubesvc") as mesh:
        try:
            _scenario(mesh, binary, tmp_path)
        except BaseException:
            print(mesh.dump_logs())
            raise


def _scenario(mesh: Mesh, binary: Path, tmp_path: Path) -> None:
    mesh.start_agent(1)
    mesh.team("a", "100.98.0.0/16")
    mesh.api("POST", "/api/v1/teams/a/clusters", {"kind": "Cluster", "metadata": {"name": "c1"}})
    k = cluster_kubectl(mesh, tmp_path / "home", binary=binary)
    manifest = tmp_path / "app.json"
    items = [
        _deployment("web", 8080, mesh.marker),
        _deployment("client", 9090, mesh.marker),
        _service("front", "web"),
        _service("nobody", "none"),
    ]
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    k.ok("apply", "-f", str(manifest))

    def ready(pod: dict[str, Any]) -> bool:
        conditions = pod.get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def pods() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(k.ok("get", "pods", "-o", "json"))["items"]
        return found

    eventually(lambda: len(pods()) == 2 and all(ready(p) for p in pods()), "two Ready pods")
    assert len(mesh.replicas()) == 2
    [client] = [p["metadata"]["name"] for p in pods() if p["metadata"]["labels"]["app"] == "client"]
    front_ip = k.ok("get", "svc", "front", "-o", "jsonpath={.spec.clusterIP}")
    assert front_ip.startswith("100.98.")

    def in_pod(code: str, arg: str) -> str:
        done = k("exec", client, "--", sys.executable, "-c", code, arg)
        return done.stdout.strip() if done.returncode == 0 else f"exit {done.returncode}"

    def resolves(name: str) -> bool:
        return in_pod(RESOLVE, name) == front_ip

    for name in (
        "front.default.svc.cluster.local",
        "front.default",
        "front.default.c1.a.kled.internal",
    ):
        eventually(functools.partial(resolves, name), f"{name} resolves")
    url = "http://front.default.svc.cluster.local/"
    eventually(lambda: in_pod(GET, url) == "200", "the Service answers by name")
    assert in_pod(GET, f"http://{front_ip}/") == "200"
    assert in_pod(GET, "http://front.default.c1.a.kled.internal/") == "200"
    nobody_ip = k.ok("get", "svc", "nobody", "-o", "jsonpath={.spec.clusterIP}")
    assert in_pod(GET, f"http://{nobody_ip}/").startswith("failed")  # no backends

    assert 'service "front" deleted' in k.ok("delete", "svc", "front")
    gone = "front.default.c1.a.kled.internal"
    eventually(lambda: in_pod(RESOLVE, gone) != front_ip, "the name stops resolving")
    assert in_pod(RESOLVE, "front.default.svc.cluster.local") != front_ip
    k.ok("delete", "-f", str(manifest), "--ignore-not-found")
    eventually(lambda: not pods() and not mesh.replicas(), "no pods and no replicas")
