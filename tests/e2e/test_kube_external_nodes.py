"""An external node of a Kled Cluster: an agent joined with the cluster's own token runs the
cluster's pods and is shown as its Node, while a Kled app of the same team is never placed
there (it stays Pending, the node being the team's only one).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from agentlab import MARKER_VAR, Mesh, eventually, lab_mesh

from kled.cli.clusters import render
from kubekit import Kubectl, kubectl_binary

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]


def _deployment(marker: str) -> dict[str, Any]:
    container = {
        "name": "web",
        "image": "python:3",
        "command": [sys.executable, "-m", "http.server", "8080"],
        "env": [{"name": MARKER_VAR, "value": marker}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"kled.io/runtime": "process"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [container]},
            },
        },
    }


def test_an_agent_joined_with_a_cluster_token_runs_that_clusters_pods_only(
    tmp_path: Path,
) -> None:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    with lab_mesh(tmp_path, 1, "kubeext") as mesh:
        try:
            _scenario(mesh, binary, tmp_path)
        except BaseException:
            print(mesh.dump_logs())
            raise


def _scenario(mesh: Mesh, binary: Path, tmp_path: Path) -> None:
    mesh.team("a", "100.92.0.0/16")
    mesh.api("POST", "/api/v1/teams/a/clusters", {"kind": "Cluster", "metadata": {"name": "c1"}})
    answer = mesh.api("POST", "/k8s/a/c1/kled/token", {})
    config = tmp_path / "kubeconfig"
    config.write_text(
        render(answer["server"], "a", "c1", answer["user"], answer["token"],
               answer["certificateAuthorityData"])
    )  # fmt: skip
    k = Kubectl(binary, config, tmp_path / "home", netns=mesh.lab.host(2))
    joined = mesh.api("POST", "/k8s/a/c1/kled/node-token", {"ttl": "10m"})
    assert joined["cluster"] == "c1" and joined["token"].startswith("kledjoin")
    mesh.token = joined["token"]  # the agent of host 1 joins with the cluster's token
    mesh.start_agent(1)
    node = eventually(lambda: mesh.node("node1"), "node1 registered")
    assert node["metadata"]["labels"]["kled.io/cluster"] == "a.c1"

    mesh.app("a", "api", {"command": [sys.executable, "-m", "http.server", "7070"]})
    k.ok("apply", "-f", "-", stdin=json.dumps(_deployment(mesh.marker)))

    def running() -> list[dict[str, Any]]:
        pods = json.loads(k.ok("get", "pods", "-o", "json"))["items"]
        return [p for p in pods if p.get("status", {}).get("phase") == "Running"]

    pods = eventually(lambda: len(running()) == 2 and running(), "two Running pods")
    assert {p["spec"]["nodeName"] for p in pods} == {"node1"}
    assert k.ok("get", "nodes", "-o", "name").split() == ["node/node1"]
    # the team's own app is never placed on the cluster's node: it stays unscheduled
    app = mesh.get_app("a", "api")
    assert not [r for r in app.get("status", {}).get("replicas") or [] if r.get("node")]
    assert len(mesh.replicas()) == 2  # the two pods, nothing of the app

    # another cluster of the team does not show it
    mesh.api("POST", "/api/v1/teams/a/clusters", {"kind": "Cluster", "metadata": {"name": "c2"}})
    other = mesh.api("POST", "/k8s/a/c2/kled/token", {})
    config2 = tmp_path / "c2.kubeconfig"
    config2.write_text(
        render(other["server"], "a", "c2", other["user"], other["token"],
               other["certificateAuthorityData"])
    )  # fmt: skip
    k2 = Kubectl(binary, config2, tmp_path / "home2", netns=mesh.lab.host(2))
    assert k2.ok("get", "nodes", "-o", "name").strip() == ""

    k.ok("delete", "deploy", "web")
    mesh.api("DELETE", "/api/v1/teams/a/environments/dev/apps/api")
    eventually(lambda: not mesh.replicas(), "no replicas left")
