"""Deployments run as Kled Apps; Pods and a Deployment's status are views of the App.

A Kled Cluster has no scheduler of its own: a Deployment becomes an App (image, command,
args, env, ports, replicas, resources, probes) in an environment owned by the cluster —
``<cluster>-<namespace>`` — and Kled's scheduler, agents and runtimes run it like any
other app. What the agents report in the App's ``status.replicas`` comes back as one Pod
per replica and as the Deployment's ``status``. Pure functions of documents; the async
shell is ``kled.kube.mirror``.

The runtime is ``container`` (the pod's image, run by podman); the annotation
``kled.io/runtime: process`` runs the container's command as a process instead (no image
needed), as a process App does. A pod of several containers, its volumes and ``envFrom`` map to the
App's sidecars, init containers and volumes (``kube.containers``).

Variables from a Secret key (``valueFrom.secretKeyRef``) never enter the App document: they
go into a Kled Secret of the environment, ``<app>-env`` (``env_secret_doc``), encrypted at
rest like every Kled Secret, which the App takes with ``envFrom``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from kled.control.desired import RESTARTED_AT
from kled.errors import InvalidInput
from kled.kube import containers
from kled.kube.status import KubeError, invalid
from kled.resources import clusterservices, kinds

CLUSTER_LABEL = clusterservices.CLUSTER_LABEL
NAMESPACE_LABEL = clusterservices.NAMESPACE_LABEL
DEPLOYMENT_LABEL = "kled.io/deployment"
RUNTIME_ANNOTATION = "kled.io/runtime"

#: (kind, namespace, name) → the object, or None
Lookup = Callable[[str, str, str], dict[str, Any] | None]


def environment_name(cluster: str, namespace: str) -> str:
    return f"{cluster}-{namespace}"


KUBECTL_RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


def app_name(deployment: str) -> str:
    return deployment.replace(".", "-")


def env_secret_name(deployment: str) -> str:
    """The Kled Secret holding a Deployment's variables taken from Secret keys."""
    return f"{app_name(deployment)[:59]}-env"


def _env(
    container: dict[str, Any], namespace: str, lookup: Lookup, at: str
) -> tuple[dict[str, str], dict[str, str]]:
    """The container's variables: (literal or from a ConfigMap, from a Secret — base64)."""
    env, sealed, _ = containers.container_env(container, namespace, lookup, at, "")
    return env, sealed


def app_doc(team: str, cluster: str, deployment: dict[str, Any], lookup: Lookup) -> dict[str, Any]:
    """The App that runs ``deployment``; ``Invalid`` for what Kled cannot run."""
    return _plan(team, cluster, deployment, lookup)[0]


def derived_docs(
    team: str, cluster: str, deployment: dict[str, Any], lookup: Lookup
) -> list[dict[str, Any]]:
    """The Kled Configs and Secrets the Deployment's App refers to (``kube.containers``):
    its containers' variables from Secrets and its configMap and secret volumes."""
    return _plan(team, cluster, deployment, lookup)[1]


def _plan(
    team: str, cluster: str, deployment: dict[str, Any], lookup: Lookup
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    meta = deployment["metadata"]
    namespace = str(meta.get("namespace") or "default")
    template = deployment["spec"]["template"]
    listed = template["spec"]["containers"]
    at = "spec.template.spec.containers"
    if not listed:
        raise invalid("Deployment", meta["name"], [(at, "a pod needs a container")], "apps")
    container = listed[0]
    runtime = (meta.get("annotations") or {}).get(RUNTIME_ANNOTATION, "container")
    if runtime not in ("container", "process"):
        raise invalid(
            "Deployment",
            meta["name"],
            [(f"metadata.annotations[{RUNTIME_ANNOTATION}]", "must be container or process")],
            "apps",
        )
    env, sealed, fields = containers.container_env(
        container, namespace, lookup, f"{at}[0]", meta["name"]
    )
    command, args = containers.argv(container, env, sealed, f"{at}[0]", meta["name"])
    spec: dict[str, Any] = {
        "runtime": runtime,
        "replicas": int(deployment["spec"].get("replicas", 1)),
        "command": command,
        "args": args,
        "env": env,
        "ports": [
            {
                "port": p["containerPort"],
                "targetPort": p["containerPort"],
                "protocol": p.get("protocol", "TCP"),
            }
            | ({"name": p["name"]} if p.get("name") else {})
            for c in listed
            for p in c.get("ports") or []
        ],
    }
    if fields:
        spec["fieldEnv"] = fields
    derived = containers.Derived()
    if sealed:
        spec["envFrom"] = [{"secret": env_secret_name(meta["name"])}]
        derived.secrets[env_secret_name(meta["name"])] = sealed
    name = app_name(meta["name"])
    pod = template["spec"]
    for key, items, offset in (
        ("sidecars", listed[1:], 1),
        ("initContainers", pod.get("initContainers") or [], 0),
    ):
        place = at if key == "sidecars" else "spec.template.spec.initContainers"
        made = [
            containers.other_container(
                c, namespace, lookup, f"{place}[{i + offset}]", meta["name"], name, derived
            )
            for i, c in enumerate(items)
        ]
        if made:
            spec[key] = made
    if any(c.get("fieldEnv") for c in (spec, *spec.get("sidecars", []))):
        # metadata.name: the Pods are named <deployment>-<template hash>-<index>
        spec["replicaNamePrefix"] = f"{meta['name']}-{template_hash(deployment)}"
    found = containers.volumes(pod, namespace, lookup, meta["name"], name, derived)
    if found:
        spec["volumes"] = found
    if container.get("volumeMounts"):
        spec["volumeMounts"] = containers.mounts(container)
    if pod.get("nodeSelector"):  # the scheduler's, as for any App (and a Kled Job's)
        spec["nodeSelector"] = {str(k): str(v) for k, v in pod["nodeSelector"].items()}
    if runtime == "container":
        spec["image"] = container["image"]
    if container.get("workingDir"):
        spec["workingDir"] = container["workingDir"]
    if containers.resources(container):
        spec["resources"] = containers.resources(container)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if container.get(probe):
            spec[probe] = {
                k: v
                for k, v in container[probe].items()
                if k in ("httpGet", "tcpSocket", "exec", "initialDelaySeconds", "periodSeconds",
                         "timeoutSeconds", "failureThreshold", "successThreshold")
            }  # fmt: skip
    spec.update(_rollout(deployment["spec"]))
    grace = template["spec"].get("terminationGracePeriodSeconds")
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    # `kubectl rollout restart` stamps the pod template; the App restarts on its own stamp
    stamp = ((template.get("metadata") or {}).get("annotations") or {}).get(KUBECTL_RESTARTED_AT)
    labels = {CLUSTER_LABEL: cluster, NAMESPACE_LABEL: namespace, DEPLOYMENT_LABEL: name}
    where = {"team": team, "environment": environment_name(cluster, namespace), "labels": labels}
    app = {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {
            **({"annotations": {RESTARTED_AT: str(stamp)}} if stamp else {}),
            "name": name,
            **where,
        },
        "spec": spec,
    }
    docs = [containers.sealed_doc("Config", n, d, where) for n, d in derived.configs.items()]
    docs += [containers.sealed_doc("Secret", n, d, where) for n, d in derived.secrets.items()]
    return app, docs


def _rollout(deployment_spec: dict[str, Any]) -> dict[str, Any]:
    """The Deployment's strategy, ``paused`` and ``progressDeadlineSeconds``: the App's
    fields of the same names and shapes (its rollout is the App's)."""
    out: dict[str, Any] = {}
    strategy = deployment_spec.get("strategy") or {}
    if strategy:
        kind = strategy.get("type", "RollingUpdate")
        out["strategy"] = {"type": kind}
        rolling = strategy.get("rollingUpdate") or {}
        if kind == "RollingUpdate" and rolling:
            out["strategy"]["rollingUpdate"] = {
                k: rolling[k] for k in ("maxSurge", "maxUnavailable") if k in rolling
            }
    if deployment_spec.get("paused"):
        out["paused"] = True
    if deployment_spec.get("progressDeadlineSeconds") is not None:
        out["progressDeadlineSeconds"] = deployment_spec["progressDeadlineSeconds"]
    return out


def env_secret_doc(
    team: str, cluster: str, deployment: dict[str, Any], lookup: Lookup
) -> dict[str, Any] | None:
    """The Kled Secret of the Deployment's variables from Secret keys (None: it has none)."""
    meta = deployment["metadata"]
    namespace = str(meta.get("namespace") or "default")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    at = "spec.template.spec.containers[0]"
    _, sealed = _env(container, namespace, lookup, at)
    if not sealed:
        return None
    return {
        "apiVersion": "kled.io/v1",
        "kind": "Secret",
        "metadata": {
            "name": env_secret_name(meta["name"]),
            "team": team,
            "environment": environment_name(cluster, namespace),
            "labels": {CLUSTER_LABEL: cluster, NAMESPACE_LABEL: namespace},
        },
        "data": sealed,
    }


def _without_nulls(value: Any) -> Any:
    """``value`` with null fields dropped: Kubernetes clients send ``creationTimestamp:
    null`` in a template (``kubectl rollout undo`` does), which means no value."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def template_hash(deployment: dict[str, Any]) -> str:
    text = json.dumps(_without_nulls(deployment["spec"]["template"]), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return "".join(c for c in digest if c in "bcdfghjklmnpqrstvwxz2456789")[:10].ljust(10, "b")


def pod_name(deployment: str, revision_hash: str, index: int) -> str:
    return f"{deployment}-{revision_hash}-{index}"


def _phase(entry: dict[str, Any]) -> str:
    state = entry.get("state")
    if state == "Running":
        return "Running"
    if state in ("Failed", "Exited"):
        return "Failed"
    if state == "Succeeded":
        return "Succeeded"
    return "Pending"


def pods(deployment: dict[str, Any], app: dict[str, Any]) -> list[dict[str, Any]]:
    """One Pod per replica the App's status lists, named and labelled as a Deployment's."""
    meta = deployment["metadata"]
    template = deployment["spec"]["template"]
    revision = template_hash(deployment)
    listed = template["spec"]["containers"]
    out = []
    for entry in (app.get("status") or {}).get("replicas") or []:
        ready = entry.get("state") == "Running" and entry.get("ready") is not False
        index = int(entry.get("index", 0))
        state: dict[str, Any] = (
            {"running": {"startedAt": entry.get("startedAt")}}
            if entry.get("state") == "Running"
            else {"waiting": {"reason": entry.get("reason") or "ContainerCreating"}}
        )
        status: dict[str, Any] = {
            "phase": _phase(entry),
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"},
                {"type": "ContainersReady", "status": "True" if ready else "False"},
                {"type": "PodScheduled", "status": "True" if entry.get("node") else "False"},
            ],
            "containerStatuses": _container_statuses(listed, entry, ready, state),
            "qosClass": "BestEffort",
        }
        if template["spec"].get("initContainers"):
            done = entry.get("state") == "Running"
            status["initContainerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "ready": done,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}
                    if done
                    else {"waiting": {"reason": "PodInitializing"}},
                }
                for c in template["spec"]["initContainers"]
            ]
        others = (entry.get("containers") or {}).values()
        if ready and not all(c.get("running") for c in others):  # a sidecar is down
            for condition in status["conditions"][:2]:
                condition["status"] = "False"
        if entry.get("podIP"):
            status["podIP"] = entry["podIP"]
            status["podIPs"] = [{"ip": entry["podIP"]}]
        if entry.get("startedAt"):
            status["startTime"] = entry["startedAt"]
        spec = json.loads(json.dumps(template["spec"]))
        if entry.get("node"):
            spec["nodeName"] = entry["node"]
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name(meta["name"], revision, index),
                    "namespace": meta.get("namespace", "default"),
                    "labels": {
                        **((template.get("metadata") or {}).get("labels") or {}),
                        "pod-template-hash": revision,
                    },
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": meta["name"],
                            "uid": meta.get("uid", ""),
                            "controller": True,
                        }
                    ],
                },
                "spec": spec,
                "status": status,
            }
        )
    return out


def _container_statuses(
    listed: list[dict[str, Any]], entry: dict[str, Any], ready: bool, state: dict[str, Any]
) -> list[dict[str, Any]]:
    """The first container is the replica itself; the others are its sidecars, each with
    what the agent reports of it (running, restarts, last exit code)."""
    out = [
        {
            "name": listed[0]["name"],
            "image": listed[0].get("image", ""),
            "ready": ready,
            "started": entry.get("state") == "Running",
            "restartCount": int(entry.get("restarts", 0)),
            "state": state,
        }
    ]
    seen = entry.get("containers") or {}
    for c in listed[1:]:
        got = seen.get(c["name"]) or {}
        running = bool(got.get("running")) and entry.get("state") == "Running"
        now: dict[str, Any] = (
            {"running": {"startedAt": entry.get("startedAt")}}
            if running
            else {"waiting": {"reason": "CrashLoopBackOff" if got else "ContainerCreating"}}
        )
        item = {
            "name": c["name"],
            "image": c.get("image", ""),
            "ready": running and ready,
            "started": running,
            "restartCount": int(got.get("restarts", 0)),
            "state": now,
        }
        if got.get("lastExitCode") is not None:
            item["lastState"] = {"terminated": {"exitCode": got["lastExitCode"]}}
        out.append(item)
    return out


def deployment_status(deployment: dict[str, Any], app: dict[str, Any] | None) -> dict[str, Any]:
    wanted = int(deployment["spec"].get("replicas", 1))
    replicas = ((app or {}).get("status") or {}).get("replicas") or []
    ready = sum(1 for e in replicas if e.get("state") == "Running" and e.get("ready") is not False)
    available = ready >= wanted
    return {
        "observedGeneration": int(deployment["metadata"].get("generation", 1)),
        "replicas": len(replicas),
        "updatedReplicas": len(replicas),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(wanted - ready, 0),
        "conditions": [
            {
                "type": "Available",
                "status": "True" if available else "False",
                "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
            },
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ],
    }


def _pod_field(field: str) -> str | None:
    """Where in the pod template an App field of its pod parts comes from."""
    match = re.match(
        r"spec\.(sidecars|initContainers|volumes|volumeMounts)(?:\[(\d+)\])?(.*)", field
    )
    if match is None:
        return None
    part, index, rest = match.groups()
    if part == "sidecars":
        return f"spec.template.spec.containers[{int(index or 0) + 1}]{rest}"
    if part == "volumeMounts":
        return f"spec.template.spec.containers[0].volumeMounts{f'[{index}]' if index else ''}{rest}"
    return f"spec.template.spec.{part}{f'[{index}]' if index else ''}{rest}"


class _AnyKey(dict[str, str]):
    """The data of any ConfigMap or Secret, at admission: every key is there (empty), so
    what it refers to is resolved when it runs and the rest is still checked."""

    def __bool__(self) -> bool:
        return True

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return ""


def check_runnable(deployment: dict[str, Any]) -> None:
    """Refuse at admission what :func:`app_doc` could not run (so nothing is half-written)."""
    try:
        app = app_doc("t", "c", deployment, lambda kind, ns, name: {"data": _AnyKey()})
    except KubeError as e:
        if "not found" in e.message:
            return  # references are resolved when it runs
        raise
    try:
        kinds.validate(app)
    except InvalidInput as e:
        field = e.field or ""
        rollout = field.startswith(("spec.strategy", "spec.paused", "spec.progressDeadline"))
        at = field if rollout else "spec.template.spec.containers[0]"
        if field.startswith("metadata"):
            at = "metadata.name"
        at = _pod_field(field) or at
        name = deployment["metadata"].get("name", "")
        raise invalid("Deployment", name, [(at, e.message)], "apps") from None
