"""kPolicy on a Kled Cluster's Kubernetes kinds, driven by kubectl: a policy written for the
Deployment itself (``kinds``/``resources``, ``apiGroups``, ``namespaces``) sees
``request.object`` as the Deployment, ``request.namespace`` as its namespace; its
``mutate`` changes what is stored and run, its ``deny`` is the ``Status`` kubectl prints,
and its ``list`` reads the cluster's own Pods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubekit import Kubectl, kubectl_binary, make_cluster
from servers import RunningServer


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def k(server: RunningServer, unique_team: str, tmp_path: Path) -> Kubectl:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl is not on the PATH")
    configs = make_cluster(server, unique_team, tmp_path / "kube")
    return Kubectl(binary, configs["admin"], tmp_path / "home")


def add_policy(server: RunningServer, team: str, name: str, spec: dict[str, Any]) -> None:
    doc = {"kind": "Policy", "metadata": {"name": name}, "spec": spec}
    with server.client() as c:
        r = c.post(f"/api/v1/teams/{team}/policies", json=doc)
        assert r.status_code == 201, r.text


def deployment(name: str, image: str, namespace: str = "default") -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - {{name: main, image: "{image}"}}
"""


LABEL_DEPLOYMENTS = """
const d = request.object;
d.metadata.labels = Object.assign({}, d.metadata.labels, {"cost-center": request.namespace});
d.spec.template.metadata.labels["cost-center"] = request.namespace;
for (const c of d.spec.template.spec.containers) {
  c.env = (c.env || []).concat([{name: "CLUSTER", value: request.cluster}]);
}
mutate(d);
"""


def test_a_mutation_of_a_deployment_is_stored_and_run(
    server: RunningServer, unique_team: str, k: Kubectl
) -> None:
    add_policy(
        server,
        unique_team,
        "cost-center",
        {
            "type": "Mutating",
            "kinds": ["Deployment"],
            "apiGroups": ["apps"],
            "operations": ["CREATE", "UPDATE"],
            "javascript": LABEL_DEPLOYMENTS,
        },
    )
    k.ok("create", "namespace", "shop")
    k.ok("apply", "-f", "-", stdin=deployment("web", "localhost/kled-test:v1", "shop"))
    k.ok("create", "configmap", "conf", "-n", "shop", "--from-literal=a=b")

    labels = k.ok("get", "deploy", "web", "-n", "shop", "-o", "jsonpath={.metadata.labels}")
    assert '"cost-center":"shop"' in labels
    env = k.ok(
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env}",
    )
    assert '"name":"CLUSTER"' in env and '"value":"dev"' in env
    # what runs is the mutated Deployment: the App has the variable and the pod label
    with server.client() as c:
        app = c.get(f"/api/v1/teams/{unique_team}/environments/dev-shop/apps/web").json()
    assert app["spec"]["env"]["CLUSTER"] == "dev", app["spec"]
    # the policy names Deployments only: a ConfigMap is not touched
    assert k.ok("get", "cm", "conf", "-n", "shop", "-o", "jsonpath={.metadata.labels}") == ""
    # a later apply of the same manifest is mutated again, and kubectl sees no drift
    k.ok("apply", "-f", "-", stdin=deployment("web", "localhost/kled-test:v2", "shop"))
    assert '"cost-center":"shop"' in k.ok(
        "get", "deploy", "web", "-n", "shop", "-o", "jsonpath={.metadata.labels}"
    )


NO_LATEST = """
const spec = request.kind.kind === "Pod" ? request.object.spec : request.object.spec.template.spec;
for (const c of spec.containers) {
  const tag = c.image.includes(":") ? c.image.split(":").pop() : "latest";
  if (tag === "latest") {
    deny(`container ${c.name} of ${request.name} in ${request.namespace} uses the latest tag`);
  }
}
"""


def test_a_deny_on_latest_images_is_what_kubectl_prints(
    server: RunningServer, unique_team: str, k: Kubectl
) -> None:
    add_policy(
        server,
        unique_team,
        "no-latest",
        {
            "resources": ["deployments", "pods"],
            "operations": ["CREATE", "UPDATE"],
            "namespaces": ["prod*"],
            "javascript": NO_LATEST,
        },
    )
    k.ok("create", "namespace", "prod")
    done = k("apply", "-f", "-", stdin=deployment("api", "localhost/kled-test", "prod"))
    assert done.returncode == 1
    assert (
        'Error from server (Forbidden): error when creating "STDIN": policy no-latest denied '
        "the request: container main of api in prod uses the latest tag"
    ) in done.stderr
    assert k("get", "deploy", "api", "-n", "prod").returncode == 1  # nothing stored

    k.ok("apply", "-f", "-", stdin=deployment("api", "localhost/kled-test:v1", "prod"))
    done = k("set", "image", "deploy/api", "main=localhost/kled-test:latest", "-n", "prod")
    assert done.returncode == 1 and "uses the latest tag" in done.stderr
    image = "jsonpath={.spec.template.spec.containers[0].image}"
    assert k.ok("get", "deploy", "api", "-n", "prod", "-o", image) == "localhost/kled-test:v1"
    # outside the policy's namespaces it does not apply
    k.ok("apply", "-f", "-", stdin=deployment("api", "localhost/kled-test:latest"))


INVALID_NAME = """
if (!/^[a-z]+-[a-z]+$/.test(request.name)) {
  deny(`${request.name}: service names are <team>-<what>`, "Invalid", 422);
}
"""


def test_a_deny_with_422_is_invalid_in_kubectl(
    server: RunningServer, unique_team: str, k: Kubectl
) -> None:
    add_policy(
        server,
        unique_team,
        "svc-names",
        {"kinds": ["Service"], "operations": ["CREATE"], "javascript": INVALID_NAME},
    )
    done = k("apply", "-f", "-", stdin=service("front"))
    assert done.returncode == 1
    assert (
        # kubectl's words for a 422 Invalid Status without field causes
        'The request is invalid: error when creating "STDIN": policy svc-names denied '
        "the request: front: service names are <team>-<what>"
    ) in done.stderr
    k.ok("apply", "-f", "-", stdin=service("shop-front"))
    assert k.ok("get", "svc", "-o", "name") == "service/shop-front\n"


def service(name: str) -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


AT_MOST_TWO_PODS = """
const pods = list("Pod", "v1", {namespace: request.namespace});
if (pods.length >= 2) {
  deny(`namespace ${request.namespace} already has ${pods.length} pods: ` +
       pods.map(p => p.metadata.name).sort().join(","));
}
const mine = list("Pod", "v1", {namespace: request.namespace, labelSelector: "tier=db"});
if (mine.length > 0 && request.object.metadata.labels?.tier === "db") {
  deny(`one db pod per namespace (${mine[0].metadata.name})`);
}
"""


def pod(name: str, namespace: str = "default", tier: str = "web") -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{tier: {tier}}}}}
spec:
  containers:
  - {{name: main, image: "localhost/kled-test:v1"}}
"""


def test_a_list_based_rule_reads_the_clusters_pods(
    server: RunningServer, unique_team: str, k: Kubectl
) -> None:
    add_policy(
        server,
        unique_team,
        "pod-budget",
        {"resources": ["pods"], "operations": ["CREATE"], "javascript": AT_MOST_TWO_PODS},
    )
    k.ok("apply", "-f", "-", stdin=pod("db-1", tier="db"))
    done = k("apply", "-f", "-", stdin=pod("db-2", tier="db"))
    assert done.returncode == 1 and "one db pod per namespace (db-1)" in done.stderr
    k.ok("apply", "-f", "-", stdin=pod("web-1"))
    done = k("apply", "-f", "-", stdin=pod("web-2"))
    assert done.returncode == 1
    assert "namespace default already has 2 pods: db-1,web-1" in done.stderr
    # another namespace has its own count
    k.ok("create", "namespace", "other")
    k.ok("apply", "-f", "-", stdin=pod("web-2", "other"))
    assert k.ok("get", "pods", "-A", "-o", "name").split() == [
        "pod/db-1",
        "pod/web-1",
        "pod/web-2",
    ]
