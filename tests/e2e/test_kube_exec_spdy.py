"""``kubectl exec`` with kubectl 1.27 and 1.29: pods/exec over SPDY/3.1 on the upgraded
HTTPS connection (``v4.channel.k8s.io``), into a pod run by a real agent on another host.

The command's stdout and stderr come back on their streams, its exit code as kubectl's own
(``command terminated with exit code 3``), stdin reaches it (``-i``) and its end closes
it; a pod that does not exist is 404 and a viewer is refused ``pods/exec``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from agentlab import MARKER_VAR, Mesh, eventually, lab_mesh
from kubelab import cluster_kubectl, create_cluster

from kubekit import Kubectl, kubectl_binary

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]


def _deployment(marker: str) -> dict[str, Any]:
    container = {
        "name": "web", "image": "python:3",
        "command": [sys.executable, "-m", "http.server", "8080", "--bind", "127.0.0.1"],
        "env": [{"name": MARKER_VAR, "value": marker}],
    }  # fmt: skip
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"kled.io/runtime": "process"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [container]}}},
    }  # fmt: skip


def test_kubectl_before_1_30_execs_over_spdy(tmp_path: Path) -> None:
    old = kubectl_binary("1.27")
    if old is None:
        pytest.skip("kubectl 1.27 is not beside the kubectl on the PATH")
    with lab_mesh(tmp_path, 1, "kubeexs") as mesh:
        try:
            _scenario(mesh, tmp_path, old)
        except BaseException:
            print(mesh.dump_logs())
            raise


def _scenario(mesh: Mesh, tmp_path: Path, old: Path) -> None:
    mesh.start_agent(1)
    mesh.team("a", "100.97.0.0/16")
    create_cluster(mesh, users={"vic": "view"})
    netns = mesh.lab.host(2)
    k = cluster_kubectl(mesh, tmp_path / "home", binary=old)
    k.ok("apply", "-f", "-", stdin=json.dumps(_deployment(mesh.marker)))

    def pod() -> str:
        items = json.loads(k.ok("get", "pods", "-o", "json"))["items"]
        return str(items[0]["metadata"]["name"]) if items else ""

    name = eventually(pod, "a pod")
    # a replica first started before its pod network existed is restarted into it
    eventually(lambda: k("exec", name, "--", "true").returncode == 0, "the pod runs commands")

    done = k("exec", name, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.returncode, done.stdout) == (3, "out\n"), done.stderr
    assert "err\n" in done.stderr
    assert "command terminated with exit code 3" in done.stderr
    piped = k("exec", "-i", name, "--", "sh", "-c", "cat; echo done")
    assert piped.stdout == "done\n" and piped.returncode == 0
    fed = k("exec", "-i", name, "--", "cat", stdin="hello over spdy\n" * 1000)
    assert (fed.returncode, fed.stdout) == (0, "hello over spdy\n" * 1000), fed.stderr

    newer = kubectl_binary("1.29")
    if newer is not None:
        k29 = Kubectl(newer, k.kubeconfig, tmp_path / "home-1.29", netns=netns)
        assert k29.ok("exec", name, "--", "echo", "from 1.29") == "from 1.29\n"

    missing = k("exec", "nope", "--", "true")
    assert missing.returncode != 0 and 'pods "nope" not found' in missing.stderr
    viewer = cluster_kubectl(mesh, tmp_path / "h-vic", user="vic", binary=old)
    refused = viewer("exec", name, "--", "true")
    assert refused.returncode != 0
    assert 'User "vic" cannot create resource "pods/exec"' in refused.stderr, refused.stderr
