"""kubectl flows beyond apply/get against a Kled Cluster: kustomize (``apply -k``,
``diff -k``, ``delete -k``, built into kubectl) and the Events written for pod
lifecycle.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubekit import Kubectl, kubectl_binary, make_cluster
from servers import RunningServer

KUSTOMIZATION = """\
namePrefix: shop-
labels:
- pairs: {team: shop}
  includeSelectors: true
configMapGenerator:
- name: settings
  literals: [COLOR=blue]
resources: [service.yaml]
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def configs(server: RunningServer, unique_team: str, tmp_path: Path) -> dict[str, Path]:
    return make_cluster(server, unique_team, tmp_path / "kube")


@pytest.mark.parametrize("version", ["1.27", None, "1.33"])
def test_kustomize_apply_diff_delete(
    configs: dict[str, Path], tmp_path: Path, version: str | None
) -> None:
    binary = kubectl_binary(version)
    if binary is None:
        pytest.skip(f"kubectl {version or ''} is not installed beside the one on the PATH")
    k = Kubectl(binary, configs["admin"], tmp_path / "home")
    folder = tmp_path / "kustomize"
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(KUSTOMIZATION)
    (folder / "service.yaml").write_text(SERVICE)

    out = k.ok("apply", "-k", str(folder))
    assert "service/shop-web created" in out
    [generated] = [w for w in out.split() if w.startswith("configmap/shop-settings-")]
    name = generated.split("/", 1)[1]
    config = json.loads(k.ok("get", "cm", name, "-o", "json"))
    assert config["data"] == {"COLOR": "blue"}
    assert config["metadata"]["labels"] == {"team": "shop"}
    svc = json.loads(k.ok("get", "svc", "shop-web", "-o", "json"))
    assert svc["spec"]["selector"] == {"app": "web", "team": "shop"}

    assert k("diff", "-k", str(folder)).returncode == 0
    (folder / "kustomization.yaml").write_text(KUSTOMIZATION.replace("blue", "green"))
    diff = k("diff", "-k", str(folder))
    assert diff.returncode == 1 and "+  COLOR: green" in diff.stdout

    k.ok("apply", "-k", str(folder))
    out = k.ok("delete", "-k", str(folder))
    assert 'service "shop-web" deleted' in out
    # the first generated ConfigMap (its name hashes "blue") is left, as without --prune
    left = k.ok("get", "svc,cm", "-l", "team=shop", "-o", "name").split()
    assert left == [f"configmap/{name}"]


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "localhost/kled-test:v1"}
"""


def _image(k: Kubectl) -> str:
    return k.ok("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}")


@pytest.mark.parametrize("version", ["1.27", None, "1.33"])
def test_rollout_history_and_undo_through_replicasets(
    configs: dict[str, Path], tmp_path: Path, version: str | None
) -> None:
    binary = kubectl_binary(version)
    if binary is None:
        pytest.skip(f"kubectl {version or ''} is not installed beside the one on the PATH")
    k = Kubectl(binary, configs["admin"], tmp_path / "home")
    k.ok("apply", "-f", "-", stdin=DEPLOYMENT)
    k.ok("set", "image", "deploy/web", "web=localhost/kled-test:v2")
    k.ok("annotate", "deploy/web", "kubernetes.io/change-cause=to v2")

    history = k.ok("rollout", "history", "deploy/web")
    rows = [line.split(None, 1) for line in history.splitlines()[2:] if line.strip()]
    assert [r[0] for r in rows] == ["1", "2"], history
    sets = k.ok("get", "rs").splitlines()
    assert sets[0].split()[:4] == ["NAME", "DESIRED", "CURRENT", "READY"]
    assert sorted(line.split()[1] for line in sets[1:]) == ["0", "2"]
    assert "localhost/kled-test:v2" in k.ok("rollout", "history", "deploy/web", "--revision=2")

    assert "rolled back" in k.ok("rollout", "undo", "deploy/web")
    assert _image(k) == "localhost/kled-test:v1"
    history = k.ok("rollout", "history", "deploy/web")
    assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["2", "3"]
    k.ok("rollout", "undo", "deploy/web", "--to-revision=2")
    assert _image(k) == "localhost/kled-test:v2"
    revision = "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
    assert k.ok("get", "deploy", "web", "-o", revision) == "4"

    done = k("delete", "rs", "--all")
    assert done.returncode == 1 and "not supported" in done.stderr
    k.ok("delete", "deploy", "web")
    assert "No resources found" in k("get", "rs").stderr


def test_a_deployments_strategy_is_its_apps(
    server: RunningServer, unique_team: str, configs: dict[str, Path], tmp_path: Path
) -> None:
    k = Kubectl(kubectl_binary() or pytest.skip("kubectl is not on the PATH"),
                configs["admin"], tmp_path / "home")  # fmt: skip
    strategy = (
        "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}\n"
    )
    manifest = DEPLOYMENT.replace("  replicas: 2\n", "  replicas: 2\n" + strategy)
    k.ok("apply", "-f", "-", stdin=manifest)
    with server.client() as c:
        app = c.get(f"/api/v1/teams/{unique_team}/environments/dev-default/apps/web").json()
    assert app["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}

    frozen = manifest.replace("maxSurge: 1", "maxSurge: 0")
    done = k("apply", "-f", "-", stdin=frozen)
    assert done.returncode == 1
    assert (
        'The Deployment "web" is invalid: spec.strategy.rollingUpdate.maxUnavailable: '
        "Invalid value: maxSurge and maxUnavailable cannot both be 0"
    ) in done.stderr
    assert (
        k.ok("get", "deploy", "web", "-o", "jsonpath={.spec.strategy.rollingUpdate.maxSurge}")
        == "1"
    )
