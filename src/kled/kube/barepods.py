"""Pods created directly (owned by nothing) run as one-replica Apps, as a kubelet runs them.

A bare Pod of namespace ``ns`` becomes the App ``pod-<name>`` of the environment
``<cluster>-<ns>`` (label ``kled.io/pod``), made from the Pod's spec exactly as a
Deployment's pod template is (``workloads``: containers, sidecars, volumes, env,
``restartPolicy``), with one replica. The Pod itself stays the user's object: the mirror
writes the replica's node, phase, pod IP and container statuses into it, and the
annotation ``kled.io/app`` that ``kubectl logs`` and ``kubectl exec`` follow to the
replica. Deleting the Pod deletes its App (the replica stops) and what it made.
"""

from __future__ import annotations

import contextlib
from typing import Any

from kled.api.service import ADMIN, Service
from kled.errors import Conflict, NotFound
from kled.kube import containers, workloads
from kled.kube.environments import ensure_environment
from kled.kube.objects import ClusterObjects
from kled.kube.served import by_kind
from kled.kube.status import KubeError, invalid
from kled.store.objects import Key

POD_LABEL = "kled.io/pod"
#: the App a Pod is run by (replica 0), as a Job's pods say it too
APP_ANNOTATION = "kled.io/app"
POD = by_kind("v1", "Pod")


#: on a pod a delete with propagationPolicy Orphan left behind (``kube.deletion``): it is
#: still its Deployment's or Job's App's replica, not a bare Pod to run
ORPHANED = "kled.io/orphaned-from"


def is_bare(pod: dict[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    return not meta.get("ownerReferences") and ORPHANED not in (meta.get("annotations") or {})


def app_name(pod: str) -> str:
    return containers.derived_name("pod", workloads.app_name(pod))


def as_deployment(pod: dict[str, Any]) -> dict[str, Any]:
    """The Pod as a one-replica Deployment named after its App (same mapping, one path)."""
    meta = pod["metadata"]
    return {
        "metadata": {
            "name": app_name(meta["name"]),
            "namespace": meta.get("namespace") or "default",
            **({"annotations": meta["annotations"]} if meta.get("annotations") else {}),
        },
        "spec": {
            "replicas": 1,
            "template": {"metadata": {"labels": meta.get("labels") or {}}, "spec": pod["spec"]},
        },
    }


def check_runnable(pod: dict[str, Any]) -> None:
    """Refuse at admission what could not run, naming the Pod's own fields."""
    name = str(pod["metadata"].get("name", ""))
    if len(name) > 63:
        raise invalid("Pod", name, [("metadata.name", "must be at most 63 characters to run")])
    try:
        workloads.check_runnable(as_deployment(pod))
    except KubeError as e:
        causes = (e.details or {}).get("causes") or []
        fields = [
            (str(c.get("field", "")).replace("spec.template.spec.", "spec."), str(c["message"]))
            for c in causes
        ]
        raise invalid("Pod", pod["metadata"].get("name", ""), fields) from None


def app_doc(
    team: str, cluster: str, pod: dict[str, Any], lookup: workloads.Lookup
) -> dict[str, Any]:
    app = workloads.app_doc(team, cluster, as_deployment(pod), lookup)
    labels = app["metadata"]["labels"]
    labels.pop(workloads.DEPLOYMENT_LABEL, None)  # not a Deployment's: the mirror tells apart
    labels[POD_LABEL] = pod["metadata"]["name"]  # at most 63 (check_runnable)
    policy = pod["spec"].get("restartPolicy")
    if policy:
        app["spec"]["restartPolicy"] = policy
    _name_known(app["spec"], pod["metadata"]["name"])
    return app


def _name_known(spec: dict[str, Any], name: str) -> None:
    """A bare Pod's name is its own, not its replica's: a literal variable."""
    spec.pop("replicaNamePrefix", None)
    for c in (spec, *spec.get("sidecars", []), *spec.get("initContainers", [])):
        fields = c.get("fieldEnv") or {}
        for var in [v for v, path in fields.items() if path == "metadata.name"]:
            c.setdefault("env", {})[var] = name
            del fields[var]
        if not fields:
            c.pop("fieldEnv", None)


async def sync(svc: Service, objects: ClusterObjects, namespace: str, name: str) -> None:
    """Make the App of bare Pod ``namespace/name`` match it (or go, with it)."""
    from kled.kube import mirror  # it runs what this module makes

    assert POD is not None
    env = workloads.environment_name(objects.cluster, namespace)
    key = Key("App", objects.team, env, app_name(name))
    pod = await objects.find(POD, namespace, name)
    if pod is None or not is_bare(pod):
        with contextlib.suppress(NotFound):
            await svc.delete(ADMIN, key)
        await mirror.prune_derived(svc, objects.team, env, key.name, set())
        return
    await ensure_environment(svc, objects, namespace)
    lookup = await mirror.lookup_table(objects, namespace)
    shaped = as_deployment(pod)
    derived = workloads.derived_docs(objects.team, objects.cluster, shaped, lookup)
    for doc in derived:
        await svc.apply(ADMIN, doc)
    await svc.apply(ADMIN, app_doc(objects.team, objects.cluster, pod, lookup))
    keep = {(d["kind"], d["metadata"]["name"]) for d in derived}
    await mirror.prune_derived(svc, objects.team, env, key.name, keep)
    await _stamp(objects, namespace, name, None)


async def _stamp(objects: ClusterObjects, namespace: str, name: str, node: str | None) -> None:
    """The Pod names its App (``kled.io/app``) and, once placed, its node; written again
    on a conflict with another writer of the Pod (the user, the mirror)."""
    assert POD is not None
    for _ in range(5):
        pod = await objects.find(POD, namespace, name)
        if pod is None or not is_bare(pod):
            return
        annotations = pod["metadata"].get("annotations") or {}
        meta = {**pod["metadata"], "annotations": {**annotations, APP_ANNOTATION: app_name(name)}}
        spec = {**pod["spec"], **({"nodeName": node} if node else {})}
        if meta == pod["metadata"] and spec == pod["spec"]:
            return
        try:
            await objects.update(POD, {**pod, "metadata": meta, "spec": spec})
            return
        except NotFound:
            return
        except Conflict:
            continue


async def mirror_status(
    objects: ClusterObjects, namespace: str, name: str, app: dict[str, Any] | None
) -> None:
    """The Pod's node, phase, IP and container statuses from its App's replica."""
    assert POD is not None
    pod = await objects.find(POD, namespace, name)
    if pod is None or not is_bare(pod) or app is None:
        return
    views = workloads.pods(as_deployment(pod), app)
    if not views:
        status: dict[str, Any] = {"phase": "Pending"}
        node = None
    else:
        status, node = views[0]["status"], views[0]["spec"].get("nodeName")
    await _stamp(objects, namespace, name, node)
    if pod.get("status") != status:
        with contextlib.suppress(NotFound):
            await objects.update_status(POD, namespace, name, status)
