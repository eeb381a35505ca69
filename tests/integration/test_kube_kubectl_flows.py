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
