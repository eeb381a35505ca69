"""The downward API in a Kled Cluster: ``fieldRef`` of a pod's name, IP and node.

The kube layer turns each into the App's ``fieldEnv`` (the pod's name is
``<deployment>-<template hash>-<index>``, as the Pods are listed); the agent sets the
values where the replica runs (``agent/downward.py``).
"""

from __future__ import annotations

from typing import Any

import pytest

from kled.agent.downward import NO_POD_IP, with_fields
from kled.control.desired import replica_spec
from kled.control.podparts import resolve
from kled.kube import barepods, jobs, workloads
from kled.kube.status import KubeError
from kled.resources import kinds


def ref(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def pod_spec() -> dict[str, Any]:
    return {
        "containers": [
            {
                "name": "web",
                "image": "localhost/web:1",
                "env": [
                    ref("POD_NAME", "metadata.name"),
                    ref("POD_IP", "status.podIP"),
                    {"name": "NODE", "value": "overwritten"},
                    ref("NODE", "spec.nodeName"),  # the later entry of a name wins
                    ref("NS", "metadata.namespace"),
                ],
            },
            {"name": "log", "image": "localhost/log:1", "env": [ref("WHERE", "spec.nodeName")]},
        ]
    }


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "web"}},
                                             "spec": pod_spec()}},
    }  # fmt: skip


def no_objects(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    return None


def test_a_deployments_field_refs_are_set_by_the_agent_as_kubectl_names_the_pod() -> None:
    app = kinds.validate(workloads.app_doc("acme", "dev", deployment(), no_objects))
    spec = app["spec"]
    assert spec["env"] == {"NS": "shop"}  # known here: literal
    assert spec["fieldEnv"] == {
        "POD_NAME": "metadata.name", "POD_IP": "status.podIP", "NODE": "spec.nodeName",
    }  # fmt: skip
    assert spec["sidecars"][0]["fieldEnv"] == {"WHERE": "spec.nodeName"}
    pod = resolve(app, {}, {})
    assert not isinstance(pod, Exception)
    replica = replica_spec(app, 1, spec["env"], pod).model_copy(update={"pod_ip": "100.64.3.17"})
    placed = with_fields(replica, "node-7")
    listed = workloads.pods(deployment(), {"status": {"replicas": [{"index": 1}]}})
    assert placed.env == {
        "NS": "shop",
        "POD_NAME": listed[0]["metadata"]["name"],  # what `kubectl get pods` shows
        "POD_IP": "100.64.3.17",
        "NODE": "node-7",
    }
    assert placed.sidecars[0].env == {"WHERE": "node-7"}
    assert with_fields(placed, "node-7") == placed  # as the agent compares it: stable


def test_a_replica_without_a_pod_gets_loopback_and_one_without_fields_is_unchanged() -> None:
    app = kinds.validate(workloads.app_doc("acme", "dev", deployment(), no_objects))
    replica = replica_spec(app, 0, {}, None)
    assert with_fields(replica, "n1").env["POD_IP"] == NO_POD_IP
    plain = replica.model_copy(update={"field_env": {}, "sidecars": []})
    assert with_fields(plain, "n1") is plain
    # (an agent older than fieldEnv is sent what it was sent before)
    assert "field_env" not in plain.model_dump() and "name_prefix" in replica.model_dump()


def test_a_bare_pods_name_is_its_own() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "solo", "namespace": "shop"},
        "spec": pod_spec(),
    }
    spec = kinds.validate(barepods.app_doc("acme", "dev", pod, no_objects))["spec"]
    assert spec["env"] == {"NS": "shop", "POD_NAME": "solo"}
    assert spec["fieldEnv"] == {"POD_IP": "status.podIP", "NODE": "spec.nodeName"}
    assert "replicaNamePrefix" not in spec


def test_a_field_ref_not_run_is_refused_naming_the_field() -> None:
    bad = deployment()
    bad["spec"]["template"]["spec"]["containers"][0]["env"][1] = ref("HOST", "status.hostIP")
    with pytest.raises(KubeError) as caught:
        workloads.app_doc("acme", "dev", bad, no_objects)
    [cause] = caught.value.details["causes"]
    assert cause["field"] == "spec.template.spec.containers[0].env[1].valueFrom.fieldRef.fieldPath"
    assert "metadata.name, status.podIP, spec.nodeName" in cause["message"]


def test_a_jobs_pod_takes_its_ip_and_node_but_not_its_name() -> None:
    spec = pod_spec()
    spec["containers"] = spec["containers"][:1]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "pi", "namespace": "shop", "uid": "j1"},
        "spec": {"template": {"spec": {**spec, "restartPolicy": "Never"}}},
    }
    with pytest.raises(KubeError) as caught:
        jobs.kled_job("acme", "dev", job, no_objects)
    assert "metadata.name is not run in a Job's pod" in caught.value.details["causes"][0]["message"]
    spec["containers"][0]["env"] = spec["containers"][0]["env"][1:]
    made = kinds.validate(jobs.kled_job("acme", "dev", job, no_objects))
    assert made["spec"]["fieldEnv"] == {"POD_IP": "status.podIP", "NODE": "spec.nodeName"}
