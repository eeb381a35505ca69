"""``kled intercept start svc/front --cluster c1`` sends a Kled Cluster Service's traffic to a
laptop, and ``stop`` gives it back to the pods.

Host 1 runs a real agent with cluster c1's ``web`` Deployment (a probe server answering
``api-<pid>``) behind the Service ``front`` (port 80 → the container port named ``http``,
8080) and a ``client`` pod of the same cluster; host 2 is alice's laptop, joined with
``kled device join`` and serving on 7070. The client asks the Service's ClusterIP: the pod
answers, then — as soon as ``start`` returns — the laptop (port 80 → 7070), then the pod
again as soon as ``stop`` returns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentlab import MARKER_VAR, Mesh, eventually, lab_mesh, laptop_ifname, laptop_kled, serve_cmd
from kubelab import cluster_kubectl

from kubekit import kubectl_binary

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with lab_mesh(tmp_path, 2, "kubeicpt") as m:  # agent, laptop, control plane
        yield m


def _deployment(name: str, command: list[str], marker: str) -> dict[str, Any]:
    container = {
        "name": name,
        "image": "python:3",
        "command": command,
        "env": [{"name": MARKER_VAR, "value": marker}],
        "ports": [{"name": "http", "containerPort": 8080}],
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


def test_a_cluster_service_intercepted_to_a_laptop_and_back(mesh: Mesh, tmp_path: Path) -> None:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    mesh.lab.ifnames.add(laptop_ifname(tmp_path / "laptop"))
    try:
        _scenario(mesh, binary, tmp_path)
    except BaseException:
        print(mesh.dump_logs())
        raise


def _scenario(mesh: Mesh, binary: Path, tmp_path: Path) -> None:
    mesh.start_agent(1)
    mesh.team("a", "100.91.0.0/16")
    mesh.api("POST", "/api/v1/teams/a/users", {"metadata": {"name": "alice"}, "spec": {}})
    body = {"metadata": {"name": "alice-t"}, "spec": {"user": "alice"}}
    token = mesh.api("POST", "/api/v1/teams/a/tokens", body)["token"]
    cluster = {"kind": "Cluster", "metadata": {"name": "c1"}, "spec": {"users": []}}
    mesh.api("POST", "/api/v1/teams/a/clusters", cluster)
    k = cluster_kubectl(mesh, tmp_path / "home", binary=binary)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "front"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    items = [
        _deployment("web", serve_cmd(), mesh.marker),
        _deployment("client", ["sleep", "100000"], mesh.marker),
        service,
    ]
    k.ok("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    front_ip = k.ok("get", "svc", "front", "-o", "jsonpath={.spec.clusterIP}")
    caller = mesh.pod_ns(1, "a", "a.c1-default.client.0")

    def lands(where: str) -> bool:
        return all(a.startswith(where) for a in mesh.ask(caller, front_ip, 80, count=3))

    assert eventually(lambda: lands("api-"), "the pod answering by ClusterIP")
    home = tmp_path / "laptop"
    joined = laptop_kled(mesh, home, token, "device", "join", "laptop")
    assert joined.returncode == 0, joined.stderr
    laptop_ip = mesh.api("GET", "/api/v1/teams/a/devices/laptop")["status"]["ip"]
    mesh.lab.serve(mesh.lab.host(2), "laptop", 7070, 7071, bind=laptop_ip)

    started = laptop_kled(
        mesh, home, token, "intercept", "start", "svc/front", "--cluster", "c1",
        "--to", "laptop", "--port", "80:7070",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert (
        "intercept/web-laptop created: all traffic to app/web (service/front of cluster c1) "
        "goes to device/laptop"
    ) in started.stdout
    assert "intercept/c1-default/web-laptop: active on 1/1 gateways in " in started.stdout
    assert lands("laptop"), "the pod answered right after `intercept start` returned"

    wrong = laptop_kled(
        mesh, home, token, "intercept", "start", "svc/front", "--cluster", "c1",
        "--to", "laptop", "--port", "8080:7070",
    )  # fmt: skip
    assert wrong.returncode != 0
    assert "--port: service/front has no port 8080 (it has 80)" in wrong.stderr

    stopped = laptop_kled(mesh, home, token, "intercept", "stop", "svc/front", "--cluster", "c1")
    assert stopped.returncode == 0, stopped.stderr
    assert "removed from 1/1 gateways" in stopped.stdout
    assert lands("api-"), "the laptop answered right after `intercept stop` returned"

    k.ok("delete", "deploy", "web", "client")
    eventually(lambda: not mesh.replicas(), "no replicas left")
