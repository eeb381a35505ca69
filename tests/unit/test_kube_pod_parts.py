"""A Deployment's pod of several containers, its envFrom and volumes, as a Kled App."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from kled.control import podparts
from kled.control.desired import BadReference, replica_spec, resolve_env
from kled.kube import barepods, containers, workloads
from kled.kube.status import KubeError
from kled.resources import kinds

SECRET_VALUE = "hunter2-not-in-the-app"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


OBJECTS: dict[tuple[str, str], dict[str, Any]] = {
    ("ConfigMap", "settings"): {"data": {"LEVEL": "debug", "app.conf": "port=80\n"}},
    ("Secret", "creds"): {"data": {"TOKEN": b64(SECRET_VALUE)}},
}


def lookup(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    return OBJECTS.get((kind, name)) if namespace == "shop" else None


TOKEN_REF = {"name": "creds", "key": "TOKEN"}
ITEMS = [{"key": "app.conf", "path": "app.conf"}]


def deployment(**pod: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "web",
                "image": "localhost/web:1",
                "ports": [{"containerPort": 8080}],
                "envFrom": [
                    {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
                    {"secretRef": {"name": "creds"}},
                    {"configMapRef": {"name": "absent", "optional": True}},
                ],
                "env": [
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "CFG_LEVEL", "value": "info"},  # env wins over envFrom
                ],
                "volumeMounts": [
                    {"name": "conf", "mountPath": "/etc/app", "readOnly": True},
                    {"name": "scratch", "mountPath": "/scratch"},
                ],
            },
            {
                "name": "proxy",
                "image": "localhost/proxy:1",
                "args": ["--upstream", "127.0.0.1:8080"],
                "ports": [{"containerPort": 9000, "name": "proxy"}],
                "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": TOKEN_REF}}],
                "volumeMounts": [
                    {"name": "token", "mountPath": "/run/token"},
                    {"name": "scratch", "mountPath": "/s"},
                ],
            },
        ],
        "initContainers": [{"name": "migrate", "image": "localhost/web:1", "command": ["true"]}],
        "volumes": [
            {"name": "conf", "configMap": {"name": "settings", "items": ITEMS}},
            {"name": "token", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {"name": "scratch", "emptyDir": {}},
        ],
    }  # fmt: skip
    spec.update(pod)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
        "spec": {"replicas": 1, "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}},
    }


def test_a_two_container_deployment_is_one_app_with_a_sidecar_and_its_volumes() -> None:
    app = workloads.app_doc("acme", "dev", deployment(), lookup)
    docs = workloads.derived_docs("acme", "dev", deployment(), lookup)
    kinds.validate(app)
    for doc in docs:
        kinds.validate(doc)
    spec = app["spec"]
    assert spec["image"] == "localhost/web:1"
    assert spec["env"] == {"CFG_LEVEL": "info", "CFG_app.conf": "port=80\n", "NS": "shop"}
    assert spec["envFrom"] == [{"secret": "web-env"}]
    assert [s["name"] for s in spec["sidecars"]] == ["proxy"]
    assert spec["sidecars"][0]["envFrom"] == [{"secret": "web-env-proxy"}]
    assert spec["initContainers"][0]["command"] == ["true"]
    assert [p["port"] for p in spec["ports"]] == [8080, 9000]
    assert spec["volumes"] == [
        {"name": "conf", "config": {"name": "web-vol-conf", "items": ITEMS}},
        {"name": "token", "secret": {"name": "web-vol-token", "defaultMode": 0o400}},
        {"name": "scratch", "emptyDir": {}},
    ]  # fmt: skip
    assert spec["volumeMounts"][0] == {"name": "conf", "mountPath": "/etc/app", "readOnly": True}
    # Secret values go to Kled Secrets (sealed at rest), never into the App document
    assert SECRET_VALUE not in json.dumps(app) and b64(SECRET_VALUE) not in json.dumps(app)
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert set(by_name) == {
        ("Config", "web-vol-conf"),
        ("Secret", "web-env"),
        ("Secret", "web-env-proxy"),
        ("Secret", "web-vol-token"),
    }
    assert by_name[("Secret", "web-env")]["data"] == {"TOKEN": b64(SECRET_VALUE)}
    assert all(d["metadata"]["labels"][workloads.DEPLOYMENT_LABEL] == "web" for d in docs)


def test_what_the_agent_gets_files_with_modes_and_each_containers_env() -> None:
    app = kinds.validate(workloads.app_doc("acme", "dev", deployment(), lookup))
    docs = workloads.derived_docs("acme", "dev", deployment(), lookup)
    configs = {
        ("acme", "dev-shop", d["metadata"]["name"]): d for d in docs if d["kind"] == "Config"
    }
    secrets = {
        ("acme", "dev-shop", d["metadata"]["name"]): d for d in docs if d["kind"] == "Secret"
    }
    env = resolve_env(app, configs, secrets)
    pod = podparts.resolve(app, configs, secrets)
    assert isinstance(env, dict) and isinstance(pod, podparts.PodParts)
    spec = replica_spec(app, 0, env, pod)
    assert spec.env["TOKEN"] == SECRET_VALUE
    assert spec.sidecars[0].env == {"TOKEN": SECRET_VALUE}
    assert spec.init_containers[0].name == "migrate"
    files = {v.name: [(f.path, base64.b64decode(f.data).decode(), f.mode) for f in v.files]
             for v in spec.volumes}  # fmt: skip
    assert files == {
        "conf": [("app.conf", "port=80\n", 0o644)],
        "token": [("TOKEN", SECRET_VALUE, 0o400)],
        "scratch": [],
    }
    assert [(m.volume, m.path, m.read_only) for m in spec.mounts] == [
        ("conf", "/etc/app", True),
        ("scratch", "/scratch", False),
    ]
    # a missing Secret fails the app, unless the volume is optional
    missing = podparts.resolve(app, configs, {})
    assert isinstance(missing, BadReference) and missing.reason == "SecretNotFound"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "spec.template.spec.volumes[0]"),
        (
            {"volumes": [{"name": "c", "configMap": {"name": "nope"}}]},
            "spec.template.spec.volumes[0].configMap.name",
        ),
    ],
)
def test_what_is_not_run_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(KubeError) as caught:
        workloads.app_doc("acme", "dev", deployment(**change), lookup)
    assert caught.value.code == 422
    assert [c["field"] for c in caught.value.details["causes"]] == [field]


def test_admission_names_the_sidecar_at_fault() -> None:
    bad = deployment()
    bad["spec"]["template"]["spec"]["containers"][1]["volumeMounts"][0]["name"] = "ghost"
    with pytest.raises(KubeError) as caught:
        workloads.check_runnable(bad)
    fields = [c["field"] for c in caught.value.details["causes"]]
    assert fields == ["spec.template.spec.containers[1].volumeMounts[0].name"]


def test_pods_show_each_container_and_ready_counts_the_sidecar() -> None:
    dep = deployment()
    entry = {"index": 0, "state": "Running", "ready": True, "node": "n1", "restarts": 0,
             "containers": {"proxy": {"running": True, "restarts": 2}}}  # fmt: skip
    (pod,) = workloads.pods(dep, {"status": {"replicas": [entry]}})
    statuses = pod["status"]["containerStatuses"]
    assert [(s["name"], s["ready"], s["restartCount"]) for s in statuses] == [
        ("web", True, 0),
        ("proxy", True, 2),
    ]
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    entry["containers"]["proxy"]["running"] = False
    (pod,) = workloads.pods(dep, {"status": {"replicas": [entry]}})
    assert [s["ready"] for s in pod["status"]["containerStatuses"]] == [True, False]
    assert pod["status"]["conditions"][0] == {"type": "Ready", "status": "False"}


def test_logs_and_exec_pick_a_container_as_kubernetes_does() -> None:
    (pod,) = workloads.pods(deployment(), {"status": {"replicas": [{"index": 0}]}})
    pod["metadata"]["name"] = "web-x-0"
    assert containers.log_container(pod, "web") is None
    assert containers.log_container(pod, "proxy") == "proxy"
    assert containers.log_container(pod, "migrate") == "migrate"
    with pytest.raises(KubeError, match="a container name must be specified for pod web-x-0"):
        containers.log_container(pod, None)
    with pytest.raises(KubeError, match="container nope is not valid for pod web-x-0"):
        containers.sidecar_of(pod, "nope")
    assert containers.sidecar_of(pod, "proxy") == "proxy"
    assert containers.sidecar_of(pod, None) is None


def test_a_bare_pod_is_a_one_replica_app_with_its_restart_policy() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "solo", "namespace": "shop", "labels": {"run": "solo"}},
        "spec": {**deployment()["spec"]["template"]["spec"], "restartPolicy": "Never"},
    }
    app = kinds.validate(barepods.app_doc("acme", "dev", pod, lookup))
    assert app["metadata"]["name"] == "pod-solo"
    assert app["metadata"]["labels"][barepods.POD_LABEL] == "solo"
    assert workloads.DEPLOYMENT_LABEL not in app["metadata"]["labels"]
    assert (app["spec"]["replicas"], app["spec"]["restartPolicy"]) == (1, "Never")
    assert [s["name"] for s in app["spec"]["sidecars"]] == ["proxy"]
    pod["spec"]["containers"][1]["volumeMounts"][0]["name"] = "ghost"
    with pytest.raises(KubeError) as caught:
        barepods.check_runnable(pod)
    assert caught.value.details is not None and caught.value.details["kind"] == "Pod"
    fields = [c["field"] for c in caught.value.details["causes"]]
    assert fields == ["spec.containers[1].volumeMounts[0].name"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-x", "1-x"),
        ("$$(A)", "$(A)"),  # escaped
        ("$$", "$"),
        ("$(NOPE)/$(A)", "$(NOPE)/1"),  # unknown names stay as written
        ("$(A", "$(A"),  # unclosed
        ("a$b$", "a$b$"),
        ("$()", "$()"),
    ],
)
def test_variables_expand_as_kubernetes_expands_them(text: str, expected: str) -> None:
    assert containers.expand(text, {"A": "1"}.get)[0] == expected


def test_a_containers_variables_command_and_args_see_the_variables_before_them() -> None:
    pod = deployment()
    web, proxy = pod["spec"]["template"]["spec"]["containers"]
    web["env"] += [
        {"name": "URL", "value": "http://$(NS):$(CFG_LEVEL)/$(LATER)"},
        {"name": "AUTH", "value": "Bearer $(TOKEN)"},  # from a Secret: stays sealed
        {"name": "LATER", "value": "x"},
    ]
    web["command"] = ["serve", "--level=$(CFG_LEVEL)"]
    web["args"] = ["$(URL)", "$$(URL)"]
    app = workloads.app_doc("acme", "dev", pod, lookup)
    assert app["spec"]["env"]["URL"] == "http://shop:info/$(LATER)"
    assert "AUTH" not in app["spec"]["env"]
    assert SECRET_VALUE not in json.dumps(app)
    secret = workloads.env_secret_doc("acme", "dev", pod, lookup)
    assert secret is not None
    assert base64.b64decode(secret["data"]["AUTH"]).decode() == f"Bearer {SECRET_VALUE}"
    assert app["spec"]["command"] == ["serve", "--level=info"]
    assert app["spec"]["args"] == ["http://shop:info/$(LATER)", "$(URL)"]

    proxy["args"] = ["--token=$(TOKEN)"]
    with pytest.raises(KubeError) as caught:
        workloads.app_doc("acme", "dev", pod, lookup)
    [cause] = caught.value.details["causes"]
    assert cause["field"] == "spec.template.spec.containers[1].args[0]"
    assert "$(TOKEN) is a variable from a Secret" in cause["message"]
