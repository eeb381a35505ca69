"""`kubectl rollout restart` stamps a Deployment's pod template; its App must restart."""

from __future__ import annotations

from typing import Any

from kled.control.desired import RESTARTED_AT, restart_generation
from kled.kube.workloads import KUBECTL_RESTARTED_AT, app_doc
from kled.resources import clusterservices
from kled.resources.clusterservices import ClusterPort, ClusterService


def deployment(template_annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {"app": "web"}}
    if template_annotations is not None:
        meta["annotations"] = template_annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": meta,
                "spec": {"containers": [{"name": "web", "image": "localhost/web:1"}]},
            },
        },
    }


def no_lookup(kind: str, namespace: str, name: str) -> None:
    return None


def test_a_deployment_never_restarted_gives_an_app_without_a_stamp() -> None:
    app = app_doc("t", "c", deployment(), no_lookup)
    assert restart_generation(app) == 0
    assert RESTARTED_AT not in (app["metadata"].get("annotations") or {})


def test_rollout_restart_becomes_the_apps_restart_and_a_later_one_is_larger() -> None:
    first = app_doc("t", "c", deployment({KUBECTL_RESTARTED_AT: "2026-12-07T03:55:36Z"}), no_lookup)
    second = app_doc(
        "t", "c", deployment({KUBECTL_RESTARTED_AT: "2026-12-07T04:01:02Z"}), no_lookup
    )
    assert first["metadata"]["annotations"][RESTARTED_AT] == "2026-12-07T03:55:36Z"
    assert 0 < restart_generation(first) < restart_generation(second)


def test_a_restart_stamp_stays_when_services_route_to_the_deployment() -> None:
    app = app_doc("t", "c", deployment({KUBECTL_RESTARTED_AT: "2026-12-07T03:55:36Z"}), no_lookup)
    front = ClusterService("c", "default", "front", "100.64.4.1", (ClusterPort("http", 80, 8080),))
    clusterservices.with_services(app, [front])
    annotations = app["metadata"]["annotations"]
    assert annotations[RESTARTED_AT] == "2026-12-07T03:55:36Z"
    assert [s.name for s in clusterservices.entries(app)] == ["front"]
