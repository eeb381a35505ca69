"""A Kled Cluster's pod of several containers, with volumes and envFrom, run by a real agent
with podman and seen with kubectl.

The control plane runs inside a lab host (``agentlab``), one agent on another, kubectl in a
third. A Deployment's pod has an init container, the main container (busybox ``httpd``)
and a sidecar polling it on ``127.0.0.1``: the init container writes the page into an
``emptyDir`` both others mount, so the sidecar's log shows the page the main container
serves — one network namespace, one volume. ``kubectl get pods`` shows ``2/2``; ``kubectl
logs -c`` and ``kubectl exec -c`` reach each container; a configMap volume's file and a
secret volume's file are read inside, ``envFrom`` (a prefix, a Secret) and ``fieldRef``s
(the pod's namespace, name, IP and node) are in ``env``; the Secret's value is in no App
document. A new value of the volume's ConfigMap reaches the file in place, the pod not
restarted. A Pod created directly (``kubectl run``) runs on the node, its logs and exec
work, and deleting it stops it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from agentlab import MARKER_VAR, Mesh, eventually, lab_mesh
from kubelab import cluster_kubectl

from imagekit import busybox_image, podman
from kubekit import Kubectl, kubectl_binary

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]
CLUSTER = {"kind": "Cluster", "metadata": {"name": "c1"}}
SECRET = "s3cr3t-value-9a7"


def _manifests(image: str, marker: str) -> list[dict[str, Any]]:
    marked = {"name": MARKER_VAR, "value": marker}
    poll = "while true; do wget -qO- http://127.0.0.1:8080/ && echo; sleep 1; done"
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
         "data": {"GREETING": "hello", "MODE": "fast"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "files"},
         "data": {"app.conf": "level=debug"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
         "stringData": {"TOKEN": SECRET}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 2,  # sh and httpd ignore SIGTERM
                        "initContainers": [{
                            "name": "fill", "image": image,
                            "command": ["sh", "-c", "echo from-init > /work/index.html"],
                            "volumeMounts": [{"name": "shared", "mountPath": "/work"}],
                        }],
                        "containers": [
                            {
                                "name": "web", "image": image,
                                "command": ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/srv"],
                                "envFrom": [
                                    {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
                                    {"secretRef": {"name": "creds"}},
                                ],
                                "env": [marked] + [
                                    {"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}}
                                    for var, path in (("POD_NS", "metadata.namespace"),
                                                      ("POD_NAME", "metadata.name"),
                                                      ("POD_IP", "status.podIP"),
                                                      ("NODE_NAME", "spec.nodeName"))
                                ],
                                "volumeMounts": [
                                    {"name": "shared", "mountPath": "/srv"},
                                    {"name": "files", "mountPath": "/etc/app"},
                                    {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                                ],
                            },
                            {
                                "name": "poll", "image": image,
                                "command": ["sh", "-c", poll],
                                "env": [marked],
                                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                            },
                        ],
                        "volumes": [
                            {"name": "shared", "emptyDir": {}},
                            {"name": "files", "configMap": {"name": "files"}},
                            {"name": "creds", "secret": {"secretName": "creds"}},
                        ],
                    },
                },
            },
        },
    ]  # fmt: skip


def _kubectl(mesh: Mesh, tmp_path: Path) -> Kubectl:
    return cluster_kubectl(mesh, tmp_path / "home")


def _containers() -> list[str]:
    names = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
    return [n for n in names if ".c1-default." in n]


def test_a_pod_of_two_containers_with_volumes_and_env_from(tmp_path: Path) -> None:
    image = f"localhost/kled-test-kpod:{random.randint(10**6, 10**7)}"
    busybox_image(tmp_path / "image", image, ("sh", "sleep", "echo", "cat", "httpd", "wget", "env"))
    try:
        with lab_mesh(tmp_path, 1, "kubepods") as mesh:
            try:
                mesh.start_agent(1)
                mesh.team("a", "100.97.0.0/16")
                mesh.api("POST", "/api/v1/teams/a/clusters", CLUSTER)
                _scenario(mesh, _kubectl(mesh, tmp_path), image)
            except BaseException:
                print(mesh.dump_logs())
                raise
            finally:
                mesh.api("DELETE", "/api/v1/teams/a/clusters/c1")
                eventually(lambda: not _containers(), "the pod's containers removed")
    finally:
        podman("rmi", "-f", image)


def _scenario(mesh: Mesh, k: Kubectl, image: str) -> None:
    stream = json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": _manifests(image, mesh.marker)}
    )
    applied = k.ok("apply", "-f", "-", stdin=stream)
    assert "deployment.apps/web created" in applied, applied

    def row() -> list[str]:
        rows = k.ok("get", "pods", "-l", "app=web").splitlines()[1:]
        return rows[0].split() if len(rows) == 1 else []

    eventually(lambda: row()[1:3] == ["2/2", "Running"], "the pod Running with 2/2 ready")
    pod = row()[0]
    # the sidecar fetched, on localhost, the page the init container wrote for the main one
    eventually(lambda: "from-init" in k.ok("logs", pod, "-c", "poll"), "the sidecar's lines")
    assert "from-init" not in k.ok("logs", pod, "-c", "web")  # httpd logs nothing
    fetched = k.ok("exec", pod, "-c", "poll", "--", "wget", "-qO-", "http://127.0.0.1:8080/")
    assert fetched == "from-init\n"
    old = kubectl_binary("1.27")  # exec over SPDY: -c picks the sidecar there too
    if old is not None:
        k27 = Kubectl(old, k.kubeconfig, k.home.with_name("home-1.27"), netns=k.netns)
        args = ("exec", pod, "-c", "poll", "--", "sh", "-c", "cat /shared/index.html")
        assert k27.ok(*args) == "from-init\n"
    # emptyDir: what one container writes, the other reads
    k.ok("exec", pod, "-c", "poll", "--", "sh", "-c", "echo shared-ok > /shared/note")
    assert k.ok("exec", pod, "--", "cat", "/srv/note") == "shared-ok\n"
    # configMap and secret volumes: a file per key
    assert k.ok("exec", pod, "-c", "web", "--", "cat", "/etc/app/app.conf") == "level=debug"
    assert k.ok("exec", pod, "--", "cat", "/etc/creds/TOKEN") == SECRET
    refused = k("exec", pod, "--", "sh", "-c", "echo x > /etc/creds/other")
    assert refused.returncode != 0  # mounted read-only
    # envFrom (with a prefix, and a Secret's keys) and a fieldRef, in the main container
    env = set(k.ok("exec", pod, "--", "env").splitlines())
    assert {"CFG_GREETING=hello", "CFG_MODE=fast", f"TOKEN={SECRET}", "POD_NS=default"} <= env
    # the downward API: the pod's name, IP and node as kubectl shows them
    shown = json.loads(k.ok("get", "pod", pod, "-o", "json"))
    assert {f"POD_NAME={pod}", f"POD_IP={shown['status']['podIP']}",
            f"NODE_NAME={shown['spec']['nodeName']}"} <= env  # fmt: skip
    assert not any(
        line.startswith("CFG_")
        for line in k.ok("exec", pod, "-c", "poll", "--", "env").splitlines()
    )
    # the status kubectl shows per container; a container the pod has not is refused
    status = json.loads(k.ok("get", "pod", pod, "-o", "json"))["status"]
    assert [(c["name"], c["ready"]) for c in status["containerStatuses"]] == [
        ("web", True),
        ("poll", True),
    ]
    assert status["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    wrong = k("exec", pod, "-c", "nope", "--", "echo", "ran")
    assert wrong.returncode != 0 and "ran" not in wrong.stdout
    # the Secret's value is in no App document of the cluster's environment
    apps = mesh.api("GET", "/api/v1/teams/a/environments/c1-default/apps")
    assert SECRET not in json.dumps(apps)

    # a new value of the volume's ConfigMap reaches the file in place: same pod, no restart
    k.ok("patch", "configmap", "files", "--type=merge", "-p", '{"data":{"app.conf":"level=warn"}}')
    eventually(
        lambda: k.ok("exec", pod, "--", "cat", "/etc/app/app.conf") == "level=warn",
        "the new file contents in the running pod",
    )
    assert row()[0] == pod and row()[3] == "0"  # RESTARTS

    # a Pod created directly runs as a one-replica workload, owned by nothing
    marked = f"--env={MARKER_VAR}={mesh.marker}"
    ran = k.ok("run", "solo", f"--image={image}", "--restart=Never", marked,
               "--command", "--", "sh", "-c", "echo solo-up; exec sleep 300")  # fmt: skip
    assert "pod/solo created" in ran
    k.ok("wait", "--for=condition=Ready", "pod/solo", "--timeout=90s")
    solo = json.loads(k.ok("get", "pod", "solo", "-o", "json"))
    assert "ownerReferences" not in solo["metadata"] and solo["spec"]["nodeName"] == "node1"
    assert solo["status"]["podIP"].startswith("100.97.")
    eventually(lambda: "solo-up" in k.ok("logs", "solo"), "the bare pod's output")
    # (a replica started before its pod network was ready is moved into it once: wait)
    eventually(lambda: k("exec", "solo", "--", "echo", "inside").stdout == "inside\n", "exec")
    k.ok("delete", "pod", "solo", "--wait=false")
    eventually(lambda: not [n for n in _containers() if ".pod-solo." in n], "the bare pod stopped")
