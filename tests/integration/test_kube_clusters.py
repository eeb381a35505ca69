"""Kled Clusters judged by the real clients: kubectl (1.27, the PATH's, 1.33) and the
official Python ``kubernetes`` client, against a real control plane on SQLite and
PostgreSQL. Each test makes its own team and cluster on the module's server.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubekit import Kubectl, kubectl_binary, make_cluster
from servers import RunningServer

MANIFESTS = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  labels: {app: web}
data:
  GREETING: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: localhost/kled-test:latest
        command: ["python3", "-m", "http.server", "8080"]
        env:
        - name: GREETING
          valueFrom: {configMapKeyRef: {name: web-config, key: GREETING}}
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"""


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def configs(server: RunningServer, unique_team: str, tmp_path: Path) -> dict[str, Path]:
    return make_cluster(server, unique_team, tmp_path / "kube", users={"vic": "view"})


def kubectl(
    configs: dict[str, Path], tmp_path: Path, user: str = "admin", version: str | None = None
) -> Kubectl:
    binary = kubectl_binary(version)
    if binary is None:
        pytest.skip(f"kubectl {version or ''} is not installed beside the one on the PATH")
    return Kubectl(binary, configs[user], tmp_path / f"home-{user}")


@pytest.mark.parametrize("version", ["1.27", None, "1.33"])
def test_apply_get_diff_patch_delete(
    configs: dict[str, Path], tmp_path: Path, version: str | None
) -> None:
    k = kubectl(configs, tmp_path, version=version)
    files = tmp_path / "app.yaml"
    files.write_text(MANIFESTS)
    out = k.ok("apply", "-f", str(files))
    assert "configmap/web-config created" in out
    assert "deployment.apps/web created" in out
    assert "service/web created" in out

    table = k.ok("get", "deploy,svc,cm")
    assert "deployment.apps/web   0/3" in table
    [svc] = [line for line in table.splitlines() if line.startswith("service/web")]
    assert svc.split()[1] == "ClusterIP" and svc.split()[2].startswith("100.")
    assert "80/TCP" in svc

    # applying the same files again changes nothing, and kubectl diff agrees
    assert k("diff", "-f", str(files)).returncode == 0
    assert "configmap/web-config unchanged" in k.ok("apply", "-f", str(files))
    files.write_text(MANIFESTS.replace("GREETING: hello", "GREETING: bonjour"))
    diff = k("diff", "-f", str(files))
    assert diff.returncode == 1, diff.stderr
    assert "-  GREETING: hello" in diff.stdout and "+  GREETING: bonjour" in diff.stdout
    assert "configmap/web-config configured" in k.ok("apply", "-f", str(files))
    assert k.ok("get", "cm", "web-config", "-o", "jsonpath={.data.GREETING}") == "bonjour"

    # strategic merge keeps the containers' other fields; merge and JSON patches work too
    k.ok("patch", "deploy", "web", "-p", '{"spec":{"template":{"spec":{"containers":'
         '[{"name":"web","image":"localhost/kled-test:v2"}]}}}}')  # fmt: skip
    deploy = json.loads(k.ok("get", "deploy", "web", "-o", "json"))
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "localhost/kled-test:v2"
    assert container["ports"][0]["containerPort"] == 8080 and container["env"]
    k.ok("patch", "deploy", "web", "--type=merge", "-p", '{"spec":{"replicas":2}}')
    k.ok("patch", "cm", "web-config", "--type=json", "-p",
         '[{"op":"add","path":"/data/EXTRA","value":"1"}]')  # fmt: skip
    assert k.ok("get", "deploy", "web").splitlines()[1].split()[:2] == ["web", "0/2"]
    assert json.loads(k.ok("get", "cm", "web-config", "-o", "json"))["data"]["EXTRA"] == "1"

    out = k.ok("delete", "-f", str(files))
    assert 'configmap "web-config" deleted' in out
    assert 'deployment.apps "web" deleted' in out
    assert 'service "web" deleted' in out
    gone = k("get", "deploy,svc,cm")
    assert "No resources found in default namespace." in gone.stderr


def test_discovery_namespaces_and_default_service_accounts(
    configs: dict[str, Path], tmp_path: Path
) -> None:
    k = kubectl(configs, tmp_path)
    names = k.ok("get", "ns", "-o", "name").split()
    assert {"namespace/default", "namespace/kube-system"} <= set(names)
    k.ok("create", "namespace", "shop")
    accounts = k.ok("get", "sa", "-n", "shop", "-o", "name").split()
    assert accounts == ["serviceaccount/default"]
    k.ok("create", "configmap", "in-shop", "-n", "shop", "--from-literal=a=b")
    k.ok("delete", "namespace", "shop")
    assert "not found" in k("get", "cm", "in-shop", "-n", "shop").stderr
    resources = k.ok("api-resources", "-o", "name").split()
    assert {"pods", "services", "deployments.apps", "configmaps", "secrets"} <= set(resources)


def test_unknown_kind_is_kubectls_own_message(configs: dict[str, Path], tmp_path: Path) -> None:
    done = kubectl(configs, tmp_path)("get", "widgets")
    assert done.returncode == 1
    assert 'the server doesn\'t have a resource type "widgets"' in done.stderr


def test_a_view_user_reads_and_is_refused_writes_with_403(
    configs: dict[str, Path], tmp_path: Path
) -> None:
    admin = kubectl(configs, tmp_path)
    admin.ok("create", "configmap", "shared", "--from-literal=a=b")
    viewer = kubectl(configs, tmp_path, user="vic")
    assert "shared" in viewer.ok("get", "cm")
    done = viewer("create", "configmap", "mine", "--from-literal=a=b")
    assert done.returncode == 1
    assert 'configmaps is forbidden: User "vic" cannot create resource "configmaps"' in done.stderr
    secrets = viewer("get", "secrets")
    assert "Error from server (Forbidden)" in secrets.stderr
    assert "mine" not in admin.ok("get", "cm")


def test_bad_manifests_are_refused_naming_the_fields(
    configs: dict[str, Path], tmp_path: Path
) -> None:
    k = kubectl(configs, tmp_path)
    bad = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: b}}
    spec: {containers: [{name: x}]}
"""
    done = k("apply", "-f", "-", stdin=bad)
    assert done.returncode == 1
    assert 'The Deployment "bad" is invalid' in done.stderr
    assert "spec.template.spec.containers[0].image" in done.stderr
    assert "spec.template.metadata.labels" in done.stderr
    unknown = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\nbogus: 1\n"
    done = k("apply", "-f", "-", stdin=unknown)
    assert done.returncode == 1 and 'unknown field "bogus"' in done.stderr
    assert "No resources found" in k("get", "deploy,cm", "-l", "app").stderr

    # the Status object itself, as any client reads it
    config = (configs["admin"]).read_text()
    server = config.split("server: ")[1].split()[0]
    token = config.split("token: ")[1].split()[0]
    ca = base64.b64decode(config.split("certificate-authority-data: ")[1].split()[0])
    (tmp_path / "ca.pem").write_bytes(ca)
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 0}]},
    }
    with httpx.Client(verify=str(tmp_path / "ca.pem")) as client:
        r = client.post(
            f"{server}/api/v1/namespaces/default/services",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 422
    status = r.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "Invalid", 422)
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.ports[0].port"]


def test_dry_run_selectors_and_tables(configs: dict[str, Path], tmp_path: Path) -> None:
    k = kubectl(configs, tmp_path)
    files = tmp_path / "app.yaml"
    files.write_text(MANIFESTS)
    out = k.ok("apply", "--dry-run=server", "-f", str(files))
    assert "configmap/web-config created (server dry run)" in out
    assert "No resources found" in k("get", "cm,deploy,svc", "-l", "app=web").stderr
    k.ok("apply", "-f", str(files))
    k.ok("create", "configmap", "other", "--from-literal=a=b")
    assert k.ok("get", "cm", "-l", "app=web", "-o", "name").split() == ["configmap/web-config"]
    by_field = k.ok("get", "cm", "--field-selector", "metadata.name=other", "-o", "name")
    assert by_field.split() == ["configmap/other"]
    header = k.ok("get", "pods,deploy,svc", "-A").splitlines()[0]
    assert header.split()[:2] == ["NAMESPACE", "NAME"]


@pytest.fixture
def watching(
    configs: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[Kubectl, queue.Queue[str]]]:
    k = kubectl(configs, tmp_path)
    process = k.popen("get", "configmaps", "--watch", "--output-watch-events")
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield k, lines
    finally:
        process.kill()
        process.wait()


def _wait_for(lines: queue.Queue[str], words: list[str]) -> str:
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if all(w in line.split() for w in words):
            return line
    raise AssertionError(f"no line with {words} in {seen}")


def test_kubectl_get_watch_sees_creates_and_deletes(
    watching: tuple[Kubectl, queue.Queue[str]],
) -> None:
    k, lines = watching
    k.ok("create", "configmap", "seen", "--from-literal=a=b")
    _wait_for(lines, ["ADDED", "seen"])
    k.ok("delete", "configmap", "seen")
    _wait_for(lines, ["DELETED", "seen"])


def test_the_python_client_lists_and_watches(configs: dict[str, Path]) -> None:
    k8s: Any = importlib.import_module("kubernetes")
    client, watch = k8s.client, k8s.watch
    core = client.CoreV1Api(k8s.config.new_client_from_config(str(configs["admin"])))
    listed = core.list_namespaced_config_map("default")
    since = listed.metadata.resource_version

    def change() -> None:
        body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="from-py"), data={"k": "v"})
        core.create_namespaced_config_map("default", body)
        core.delete_namespaced_config_map("from-py", "default")

    events = []
    writer = threading.Timer(0.5, change)
    writer.start()
    for event in watch.Watch().stream(
        core.list_namespaced_config_map, "default", resource_version=since, timeout_seconds=10
    ):
        events.append((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            break
    writer.join()
    assert events == [("ADDED", "from-py"), ("DELETED", "from-py")]
    with pytest.raises(client.ApiException) as missing:
        core.read_namespaced_config_map("from-py", "default")
    assert missing.value.status == 404
    names = [n.metadata.name for n in core.list_namespace().items]
    assert "default" in names


def test_a_compacted_resource_version_is_410_expired(
    server: RunningServer, configs: dict[str, Path]
) -> None:
    k8s: Any = importlib.import_module("kubernetes")
    client = k8s.client
    core = client.CoreV1Api(k8s.config.new_client_from_config(str(configs["admin"])))
    old = core.list_namespaced_config_map("default").metadata.resource_version
    for name in ("after", "later"):  # the change right after ``old`` leaves the log
        core.create_namespaced_config_map(
            "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name))
        )
    service, loop = server.plane.service, server._loop
    assert service is not None and loop is not None
    store = service.store  # the event log compacted, as the compactor does
    asyncio.run_coroutine_threadsafe(store.compact(1), loop).result(30)
    with pytest.raises(client.ApiException) as gone:
        core.list_namespaced_config_map(
            "default", watch=True, resource_version=old, timeout_seconds=2, _preload_content=False
        )
    assert gone.value.status == 410
    assert json.loads(gone.value.body)["reason"] == "Expired"


def test_kpolicy_admission_applies_to_cluster_objects(
    server: RunningServer, configs: dict[str, Path], unique_team: str, tmp_path: Path
) -> None:
    script = (
        "const o = request.object.spec.object;"
        'if (o.kind === "ConfigMap" && o.metadata.name.startsWith("forbidden")) {'
        '  deny("config maps named forbidden* are not allowed"); }'
    )
    policy = {
        "kind": "Policy",
        "metadata": {"name": "no-forbidden"},
        "spec": {"type": "Validating", "resources": ["kubeobjects"], "javascript": script},
    }
    with server.client() as admin:
        r = admin.post(f"/api/v1/teams/{unique_team}/policies", json=policy)
        assert r.status_code == 201, r.text
    k = kubectl(configs, tmp_path)
    for _ in range(100):  # the policy engine picks the new policy up from the event log
        done = k("create", "configmap", "forbidden-one", "--from-literal=a=b")
        if done.returncode != 0:
            break
        k.ok("delete", "configmap", "forbidden-one")
        time.sleep(0.1)
    assert (
        "policy no-forbidden denied the request: config maps named forbidden* are not allowed"
        in (done.stderr)
    )
    assert "configmap/fine created" in k.ok("create", "configmap", "fine", "--from-literal=a=b")
