"""A Kled Cluster's ``spec.quota`` judged by kubectl and the Python client: writes past it
are refused with Kubernetes' ``exceeded quota`` (403 Forbidden) and change nothing, pods
that ask for no CPU or memory are refused under a CPU/memory bound, and every namespace
shows the quota and its use as a read-only ResourceQuota.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from kubekit import Kubectl, kubectl_binary, make_cluster
from servers import RunningServer

QUOTA = {"cpu": "1", "memory": "1Gi", "pods": 4, "services": 1}


def deployment(name: str, replicas: int, resources: str) -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: main
        image: localhost/kled-test:latest
        resources: {resources}
"""


SIZED = "{requests: {cpu: 200m, memory: 128Mi}}"


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def configs(server: RunningServer, unique_team: str, tmp_path: Path) -> dict[str, Path]:
    return make_cluster(
        server,
        unique_team,
        tmp_path / "kube",
        users={"vic": "view", "eve": "edit"},
        spec={"quota": QUOTA},
    )


def kubectl(configs: dict[str, Path], tmp_path: Path, user: str = "admin") -> Kubectl:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    return Kubectl(binary, configs[user], tmp_path / f"home-{user}")


def test_writes_past_the_quota_are_refused_in_kubernetes_words(
    configs: dict[str, Path], tmp_path: Path
) -> None:
    k = kubectl(configs, tmp_path)
    k.ok("apply", "-f", "-", stdin=deployment("web", 3, SIZED))

    done = k("scale", "deploy", "web", "--replicas=5")
    assert done.returncode == 1
    assert (
        'Error from server (Forbidden): deployments.apps "web" is forbidden: exceeded quota: '
        "cluster-quota, requested: pods=2, used: pods=3, limited: pods=4"
    ) in done.stderr
    assert k.ok("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}") == "3"

    bigger = deployment("web", 3, "{requests: {cpu: 400m, memory: 512Mi}}")
    done = k("apply", "-f", "-", stdin=bigger)
    assert done.returncode == 1
    assert (
        "exceeded quota: cluster-quota, requested: cpu=600m,memory=1152Mi, "
        "used: cpu=600m,memory=384Mi, limited: cpu=1,memory=1Gi"
    ) in done.stderr
    assert "200m" in k.ok("get", "deploy", "web", "-o", "json")

    done = k("apply", "-f", "-", stdin=deployment("bare", 1, "{}"))
    assert done.returncode == 1
    assert (
        'deployments.apps "bare" is forbidden: failed quota: cluster-quota: must specify cpu,memory'
    ) in done.stderr

    k.ok("create", "service", "clusterip", "one", "--tcp=80:8080")
    done = k("create", "service", "clusterip", "two", "--tcp=80:8080")
    assert done.returncode == 1
    assert (
        'services "two" is forbidden: exceeded quota: cluster-quota, '
        "requested: services=1, used: services=1, limited: services=1"
    ) in done.stderr
    assert "two" not in k.ok("get", "svc")

    # room made is room to use
    k.ok("scale", "deploy", "web", "--replicas=1")
    k.ok("scale", "deploy", "web", "--replicas=4")


def test_the_quota_is_a_read_only_resourcequota_in_every_namespace(
    configs: dict[str, Path], tmp_path: Path
) -> None:
    admin = kubectl(configs, tmp_path)
    admin.ok("apply", "-f", "-", stdin=deployment("web", 2, SIZED))
    viewer = kubectl(configs, tmp_path, user="vic")
    table = viewer.ok("get", "resourcequota")
    assert table.splitlines()[0].split() == ["NAME", "AGE", "REQUEST", "LIMIT"]
    assert "cpu: 400m/1, memory: 256Mi/1Gi, pods: 2/4, services: 0/1" in table
    assert "cluster-quota" in viewer.ok("get", "quota", "-n", "kube-system")
    described = viewer.ok("describe", "quota", "cluster-quota")
    assert "Resource" in described and "pods" in described and "memory" in described

    done = viewer("scale", "deploy", "web", "--replicas=1")
    assert done.returncode == 1
    assert 'User "vic" cannot patch resource "deployments" in API group "apps"' in done.stderr
    done = kubectl(configs, tmp_path, user="eve")("delete", "quota", "cluster-quota")
    assert done.returncode == 1
    assert 'User "eve" cannot delete resource "resourcequotas"' in done.stderr
    done = admin("delete", "quota", "cluster-quota")
    assert done.returncode == 1
    assert "delete is not supported on resources of kind resourcequotas" in done.stderr

    k8s: Any = importlib.import_module("kubernetes")
    core = k8s.client.CoreV1Api(k8s.config.new_client_from_config(str(configs["admin"])))
    [seen] = core.list_namespaced_resource_quota("default").items
    assert seen.status.hard == {"cpu": "1", "memory": "1Gi", "pods": "4", "services": "1"}
    assert seen.status.used["pods"] == "2"
    assert json.loads(admin.ok("get", "quota", "cluster-quota", "-o", "json"))["spec"]["hard"]


def test_a_cluster_without_quota_shows_none(
    server: RunningServer, unique_team: str, tmp_path: Path
) -> None:
    configs = make_cluster(server, unique_team, tmp_path / "kube")
    k = kubectl(configs, tmp_path)
    assert "No resources found" in k("get", "quota").stderr
    k.ok("apply", "-f", "-", stdin=deployment("bare", 9, "{}"))
