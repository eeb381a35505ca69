"""Two Kled Clusters of one team kept apart on a real agent's gateway.

Cluster ``c1`` runs a ``client`` Deployment; cluster ``c2`` runs ``web`` (an HTTP server)
behind the Service ``front``. From c1's pod (in its network namespace), c2's pod IP and
ClusterIP are refused; a Kled app of the team (no cluster's) reaches c2's Service and pod
all along. Once ``front`` is annotated ``kled.io/export: "true"`` c1's pod reaches its
ClusterIP (the pod IP stays closed); removing the annotation closes it again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agentlab import MARKER_VAR, Mesh, eventually, lab_mesh
from kubelab import cluster_kubectl, create_cluster

from kubekit import Kubectl, kubectl_binary

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

GET = (
    "import sys, urllib.request\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=3)\n"
    "    print(r.status)\n"
    "except Exception as e:\n"
    "    print('failed', type(e).__name__, type(getattr(e, 'reason', None)).__name__)\n"
)


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


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "front"},
    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
}


def test_clusters_of_a_team_reach_each_other_only_through_exported_services(
    tmp_path: Path,
) -> None:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    with lab_mesh(tmp_path, 1, "kubeiso") as mesh:
        try:
            _scenario(mesh, binary, tmp_path)
        except BaseException:
            print(mesh.dump_logs())
            raise


def _kubectl(mesh: Mesh, binary: Path, tmp_path: Path, cluster: str) -> Kubectl:
    create_cluster(mesh, cluster)
    return cluster_kubectl(mesh, tmp_path / f"home-{cluster}", cluster=cluster, binary=binary)


def _ready_pod(k: Kubectl, app: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for pod in json.loads(k.ok("get", "pods", "-l", f"app={app}", "-o", "json"))["items"]:
            conditions = pod.get("status", {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                found: dict[str, Any] = pod
                return found
        return None

    return eventually(find, f"a Ready pod of {app}")  # type: ignore[no-any-return]


def _scenario(mesh: Mesh, binary: Path, tmp_path: Path) -> None:
    mesh.start_agent(1)
    mesh.team("a", "100.97.0.0/16")
    one = _kubectl(mesh, binary, tmp_path, "c1")
    two = _kubectl(mesh, binary, tmp_path, "c2")
    manifest = tmp_path / "c2.json"
    items = [_deployment("web", 8080, mesh.marker), SERVICE]
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    two.ok("apply", "-f", str(manifest))
    one.ok("apply", "-f", "-", stdin=json.dumps(_deployment("client", 9090, mesh.marker)))
    # a Kled app of the team, in no cluster
    mesh.app("a", "probe", {"command": [sys.executable, "-m", "http.server", "7070"]})

    web_ip = _ready_pod(two, "web")["status"]["podIP"]
    _ready_pod(one, "client")
    front_ip = two.ok("get", "svc", "front", "-o", "jsonpath={.spec.clusterIP}")

    def inside(replica: str, url: str) -> str:
        """An HTTP GET from inside the pod's network namespace (what its process sees)."""
        argv = ["ip", "netns", "exec", mesh.pod_ns(1, "a", replica), sys.executable, "-c"]
        done = subprocess.run(
            [*argv, GET, url], capture_output=True, text=True, check=False, timeout=30
        )
        return done.stdout.strip() if done.returncode == 0 else f"exit {done.returncode}"

    def from_c1(url: str) -> str:
        return inside("a.c1-default.client.0", url)

    def from_app(url: str) -> str:
        return inside("a.dev.probe.0", url)

    service, pod = f"http://{front_ip}/", f"http://{web_ip}:8080/"
    # the team's own app reaches the cluster's Service and pod (the documented model)
    eventually(lambda: from_app(service) == "200", "a Kled app reaches c2's Service")
    assert from_app(pod) == "200"
    # c1's pod does not: refused at once (the pods share node1's bridge)
    refused = "failed URLError ConnectionRefusedError"
    eventually(lambda: from_c1(service) == refused, "c1 is refused c2's Service")
    assert from_c1(pod) == refused

    two.ok("annotate", "svc", "front", "kled.io/export=true")
    eventually(lambda: from_c1(service) == "200", "c1 reaches c2's exported Service")
    assert from_c1(pod) == refused  # the Service is open, not the pod
    assert from_app(service) == "200"

    two.ok("annotate", "svc", "front", "kled.io/export-")
    eventually(lambda: from_c1(service) == refused, "closed again")
    two.ok("delete", "-f", str(manifest))
    one.ok("delete", "deploy", "client")
    mesh.api("DELETE", "/api/v1/teams/a/environments/dev/apps/probe")
    eventually(lambda: not mesh.replicas(), "no replicas left")
