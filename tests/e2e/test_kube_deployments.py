"""A Kled Cluster's Deployment run by a real agent on a namespace host, seen with kubectl.

The control plane runs inside a lab host (``agentlab``), one agent on another; kubectl runs
in the server's host with the kubeconfig the cluster API issues. A 3-replica Deployment
(process runtime, a readiness probe) becomes an App of the cluster's environment: the
scheduler places it, the agent starts the replicas, and kubectl sees three Pods go Running
and Ready with pod IPs and a node. ``kubectl logs`` shows a replica's output, ``kubectl
exec`` runs a command in it (exit code, stdout, stderr); ``kubectl wait`` and ``rollout
status`` see the Deployment Available; ``kubectl scale`` to 1 stops two replicas, and
``kubectl delete -f`` stops the last one. Deleting the cluster while its pods run stops
them and leaves none of its environments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import kubelab
import pytest
from agentlab import MARKER_VAR, Mesh, eventually, lab_mesh
from kubelab import cluster_kubectl, ready

from kubekit import kubectl_binary

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]


def _manifest(marker: str) -> str:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"kled.io/runtime": "process"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "python:3",
                            "command": [sys.executable, "-m", "http.server", "8080"],
                            "env": [{"name": MARKER_VAR, "value": marker}],
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": 8080},
                                "periodSeconds": 1,
                            },
                        }
                    ]
                },
            },
        },
    }
    return json.dumps(deployment)


def test_a_deployment_runs_on_the_teams_node_and_kubectl_sees_its_pods(tmp_path: Path) -> None:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    with lab_mesh(tmp_path, 1, "kubetest") as mesh:
        try:
            _scenario(mesh, binary, tmp_path)
        except BaseException:
            print(mesh.dump_logs())
            raise


def _scenario(mesh: Mesh, binary: Path, tmp_path: Path) -> None:
    mesh.start_agent(1)
    mesh.team("a", "100.97.0.0/16")
    mesh.api("POST", "/api/v1/teams/a/clusters", {"kind": "Cluster", "metadata": {"name": "c1"}})
    k = cluster_kubectl(mesh, tmp_path / "home", binary=binary)
    manifest = tmp_path / "web.json"
    manifest.write_text(_manifest(mesh.marker))
    assert "deployment.apps/web created" in k.ok("apply", "-f", str(manifest))

    def three_ready() -> bool:
        pods = kubelab.pods(k)
        return len(pods) == 3 and all(ready(p) for p in pods)

    eventually(three_ready, "three Ready pods")
    k.ok("wait", "--for=condition=Available", "deployment/web", "--timeout=60s")
    assert "successfully rolled out" in k.ok("rollout", "status", "deployment/web", "--timeout=60s")
    pods = kubelab.pods(k)
    assert {p["spec"]["nodeName"] for p in pods} == {"node1"}
    assert all(p["status"]["podIP"].startswith("100.97.") for p in pods)
    rows = k.ok("get", "pods").splitlines()[1:]
    assert len(rows) == 3 and all(r.split()[1:3] == ["1/1", "Running"] for r in rows)
    assert k.ok("get", "deploy", "web").splitlines()[1].split()[:2] == ["web", "3/3"]
    assert len(mesh.replicas()) == 3
    assert k.ok("get", "nodes").splitlines()[1].split()[:2] == ["node1", "Ready"]
    # kubectl logs: the replica's own output (http.server logs each readiness probe)
    first = pods[0]["metadata"]["name"]
    eventually(lambda: '"GET / HTTP/1.1" 200' in k.ok("logs", first), "probe requests logged")
    # kubectl exec (WebSocket, v5.channel.k8s.io) into that replica, through its agent
    done = k("exec", first, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.returncode, done.stdout) == (3, "out\n"), done.stderr
    assert "err" in done.stderr
    # Events of the pod's life, as the scheduler and kubelet word them
    described = k.ok("describe", "pod", first)
    assert f"Successfully assigned default/{first} to node1" in described
    assert "Started container web" in described

    assert "deployment.apps/web scaled" in k.ok("scale", "deployment", "web", "--replicas=1")
    eventually(lambda: len(kubelab.pods(k)) == 1 and len(mesh.replicas()) == 1, "one replica left")
    killed = k.ok("get", "events", "--field-selector", "reason=Killing")
    assert killed.count("Stopping container web") == 2, killed

    k.ok("delete", "-f", str(manifest))
    eventually(lambda: not kubelab.pods(k) and not mesh.replicas(), "no pods and no replicas")

    # a cluster deleted while its pods run: they stop, and nothing of it is left
    k.ok("apply", "-f", str(manifest))
    eventually(three_ready, "three Ready pods again")
    mesh.api("DELETE", "/api/v1/teams/a/clusters/c1")
    eventually(lambda: not mesh.replicas(), "the replicas of the deleted cluster stopped")
    envs = mesh.api("GET", "/api/v1/teams/a/environments")["items"]
    assert [e["metadata"]["name"] for e in envs] == ["dev"]
    assert "You must be logged in" in k("get", "pods").stderr
