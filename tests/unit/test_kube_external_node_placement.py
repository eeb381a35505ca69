"""External nodes of a Kled Cluster (pure): a node reserved for a cluster runs that
cluster's apps only (no Kled app, workspace or other cluster's pod), and the cluster shows it
as one of its Nodes; no other cluster does."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kled.control.scheduling import NodeInfo, app_request, schedule
from kled.control.workspaces import plan_placements
from kled.kube import nodes, workloads
from kled.resources.clusterservices import CLUSTER_LABEL


def _app(name: str, env: str, cluster: str | None = None) -> dict[str, Any]:
    labels = {CLUSTER_LABEL: cluster} if cluster else {}
    meta = {"name": name, "team": "acme", "environment": env, "labels": labels}
    return {"kind": "App", "metadata": meta, "spec": {"replicas": 1}}


def test_a_reserved_node_runs_its_clusters_apps_only() -> None:
    external = NodeInfo("ext", labels={CLUSTER_LABEL: "acme.dev"})
    apps = [
        app_request(_app("web", "dev-default", "dev"), []),
        app_request(_app("api", "prod", None), []),
        app_request(_app("db", "qa-default", "qa"), []),
    ]
    plan = schedule([external], apps)
    assert plan["acme/dev-default/web"][0].node == "ext"
    assert plan["acme/prod/api"][0].node is None  # a Kled app of the team: never there
    assert plan["acme/qa-default/db"][0].node is None  # another cluster's: never there
    # with an ordinary node beside it, the others go there
    plan = schedule([external, NodeInfo("n1")], apps)
    assert {p.node for ps in plan.values() for p in ps} == {"ext", "n1"}
    assert plan["acme/prod/api"][0].node == plan["acme/qa-default/db"][0].node == "n1"
    # a replica already on a node that became reserved for another cluster moves
    moved = app_request(_app("api", "prod"), [plan["acme/prod/api"][0]])
    assert (
        schedule([NodeInfo("n1", labels={CLUSTER_LABEL: "acme.dev"})], [moved])["acme/prod/api"][
            0
        ].node
        is None
    )


def test_the_cluster_shows_its_external_nodes_and_its_selected_ones() -> None:
    def node(labels: dict[str, str]) -> dict[str, Any]:
        return {"metadata": {"name": "n", "labels": labels}}

    assert nodes.shown(node({CLUSTER_LABEL: "acme.dev"}), "acme", "dev", {"pool": "x"})
    assert not nodes.shown(node({CLUSTER_LABEL: "acme.qa"}), "acme", "dev", {})
    assert not nodes.shown(node({CLUSTER_LABEL: "beta.dev"}), "acme", "dev", {})
    assert nodes.shown(node({"pool": "x"}), "acme", "dev", {"pool": "x"})
    assert not nodes.shown(node({}), "acme", "dev", {"pool": "x"})


def test_a_workspace_never_goes_to_a_clusters_external_node() -> None:
    podman = frozenset({"podman"})
    spec = {"provider": "container"}
    workspace = {"metadata": {"name": "ws", "team": "acme"}, "spec": spec, "status": {}}
    external = NodeInfo("ext", labels={CLUSTER_LABEL: "acme.dev"}, capabilities=podman)
    placed, pending = plan_placements([workspace], [external])
    assert placed == {} and ("acme", "ws") in pending
    placed, _ = plan_placements([workspace], [external, NodeInfo("n1", capabilities=podman)])
    assert placed == {("acme", "ws"): "n1"}


def test_a_replica_kept_off_cluster_only_nodes_says_which_and_whose() -> None:
    api = app_request(_app("api", "prod"), [])
    external = [
        NodeInfo("ext", labels={CLUSTER_LABEL: "acme.dev"}),
        NodeInfo("gpu", labels={CLUSTER_LABEL: "acme.qa", "pool": "gpu"}),
    ]
    pending = schedule(external, [api])["acme/prod/api"][0]
    assert pending.node is None
    assert pending.message == (
        "0/2 nodes can take it: ext runs only the pods of Kled Cluster acme.dev; "
        "gpu runs only the pods of Kled Cluster acme.qa"
    )
    pinned = app_request({**_app("api", "prod"), "spec": {"nodeSelector": {"pool": "gpu"}}}, [])
    assert schedule(external, [pinned])["acme/prod/api"][0].message == (
        "0/2 nodes can take it: gpu runs only the pods of Kled Cluster acme.qa"
    )


def test_a_pod_templates_node_selector_is_its_apps() -> None:
    container = {"name": "web", "image": "busybox", "command": ["sleep", "1"]}
    pod = {"nodeSelector": {"kled.io/cluster": "acme.dev"}, "containers": [container]}
    deployment = {
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 1, "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod}},
    }
    app = workloads.app_doc("acme", "dev", deployment, lambda kind, ns, name: None)
    assert app["spec"]["nodeSelector"] == {"kled.io/cluster": "acme.dev"}
    placed = schedule(
        [NodeInfo("n1"), NodeInfo("ext", labels={CLUSTER_LABEL: "acme.dev"})],
        [app_request(app, [])],
    )
    assert [p.node for p in placed["acme/dev-default/web"]] == ["ext"]


def test_a_clusters_pods_go_to_its_nodes_only() -> None:
    web = replace(
        app_request(_app("web", "dev-default", "dev"), []),
        cluster_selector={"pool": "tenants"},
    )
    tenants, other = NodeInfo("t1", labels={"pool": "tenants"}), NodeInfo("n1")
    assert schedule([tenants, other], [web])["acme/dev-default/web"][0].node == "t1"
    pending = schedule([other], [web])["acme/dev-default/web"][0]
    assert pending.node is None
    assert pending.message == (
        "0/1 nodes can take it: n1 not picked by Kled Cluster acme.dev's nodeSelector pool=tenants"
    )
    external = NodeInfo("ext", labels={CLUSTER_LABEL: "acme.dev"})
    assert schedule([other, external], [web])["acme/dev-default/web"][0].node == "ext"
    # a Kled app of the team is not bound by any cluster's selector
    api = app_request(_app("api", "prod"), [])
    assert schedule([other], [api])["acme/prod/api"][0].node == "n1"


def test_a_clusters_job_runs_its_pods_on_the_clusters_nodes() -> None:
    from kled.control.jobs import attempt_app
    from kled.kube import jobs

    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "pi", "namespace": "default", "uid": "j1"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "pi", "image": "localhost/pi:1", "command": ["echo", "3.14"]}]}}},
    }  # fmt: skip
    kled = jobs.kled_job("acme", "dev", job, lambda *_: None)
    app = attempt_app(kled, 1, 0)
    labels = app["metadata"]["labels"]
    assert (labels[CLUSTER_LABEL], labels[workloads.NAMESPACE_LABEL]) == ("dev", "default")
    external = NodeInfo("ext", labels={CLUSTER_LABEL: "acme.dev"})
    assert schedule([external], [app_request(app, [])])[_key(app)][0].node == "ext"
    other = NodeInfo("ext-qa", labels={CLUSTER_LABEL: "acme.qa"})
    assert schedule([other], [app_request(app, [])])[_key(app)][0].node is None


def _key(app: dict[str, Any]) -> str:
    meta = app["metadata"]
    return f"{meta['team']}/{meta['environment']}/{meta['name']}"
