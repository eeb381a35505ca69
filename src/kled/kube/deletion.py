"""Propagation policies of a delete: what happens to what a Deployment or Job made.

``propagationPolicy`` (the query parameter, or the ``DeleteOptions`` body kubectl sends;
the older ``orphanDependents: true`` is ``Orphan``) is one of:

- ``Background`` (the default): the object goes at once, then what it made — a
  Deployment's App (so its replicas stop), ReplicaSets and Pods; a Job's Kled Job (its
  attempts' Apps) and Pods; a CronJob's Kled Job, its Jobs and their Pods.
- ``Foreground``: what it made goes first, then the object. The answer is the object as
  Kubernetes first answers it, with ``deletionTimestamp`` and the ``foregroundDeletion``
  finalizer (the store keeps no such intermediate state: watchers see the object deleted
  once its dependents are gone).
- ``Orphan``: the object goes; what runs keeps running. The ReplicaSets and Pods (a
  Deployment's) or Pods (a Job's) stay, without ``ownerReferences``, no longer updated
  (a Pod marked ``kled.io/orphaned-from: Kind/name``: not a bare Pod to run anew). A
  Deployment's App goes on: a Deployment applied again under the same name adopts it (and
  its Pods) without a restart. A Job's attempts' Apps are detached from the Kled Job
  (label ``kled.io/orphaned-job``) so its deletion does not stop them; they are Kled Apps
  of the environment ``<cluster>-<namespace>`` from then on (``kled app delete`` stops
  them).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from kled.api.service import ADMIN, Service
from kled.control.jobs import JOB_LABEL
from kled.errors import Conflict, NotFound
from kled.kube import barepods, jobsync, mirror, workloads
from kled.kube.objects import ClusterObjects
from kled.kube.served import Served, by_kind
from kled.kube.status import bad_request
from kled.store.objects import Key

POLICIES = ("Foreground", "Background", "Orphan")
ORPHANED_JOB = "kled.io/orphaned-job"
POD = by_kind("v1", "Pod")
REPLICA_SET = by_kind("apps/v1", "ReplicaSet")
JOB = by_kind("batch/v1", "Job")
#: the kinds whose delete cascades to what they made
OWNERS = ("Deployment", "Job", "CronJob")


def policy(query: str | None, options: Any) -> str:
    """The delete's propagation policy; 400 for one Kubernetes does not know."""
    chosen = query
    if chosen is None and isinstance(options, dict):
        chosen = options.get("propagationPolicy")
        if chosen is None and options.get("orphanDependents") is True:
            chosen = "Orphan"
    chosen = chosen or "Background"
    if chosen not in POLICIES:
        raise bad_request(
            f'propagationPolicy: Unsupported value: "{chosen}": supported values: '
            '"Foreground", "Background", "Orphan"'
        )
    return str(chosen)


def answer(gone: dict[str, Any], chosen: str, served: Served) -> dict[str, Any]:
    """The body of the delete's answer."""
    if chosen != "Foreground" or served.kind not in OWNERS:
        return gone
    meta = {**gone["metadata"]}
    meta.setdefault("deletionTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    meta["finalizers"] = [*(meta.get("finalizers") or []), "foregroundDeletion"]
    return {**gone, "metadata": meta}


def cascades(served: Served, chosen: str) -> bool:
    """Whether the object's dependents go after it is deleted (not for an orphaning
    delete of a Deployment, whose App stays)."""
    return not (chosen == "Orphan" and served.kind == "Deployment")


async def before(
    svc: Service, objects: ClusterObjects, served: Served, obj: dict[str, Any], chosen: str
) -> None:
    """What a policy does before the object itself is deleted."""
    if served.kind not in OWNERS:
        return
    namespace, name = obj["metadata"].get("namespace", "default"), obj["metadata"]["name"]
    if chosen == "Foreground":
        await dependents(svc, objects, served, namespace, name)
    elif chosen == "Orphan":
        await orphan(svc, objects, served, namespace, name)


async def dependents(
    svc: Service, objects: ClusterObjects, served: Served, namespace: str, name: str
) -> None:
    """Delete what Deployment, Job or CronJob ``namespace/name`` made, not itself."""
    if served.kind == "Deployment":
        env = workloads.environment_name(objects.cluster, namespace)
        for key in (
            Key("App", objects.team, env, workloads.app_name(name)),
            Key("Secret", objects.team, env, workloads.env_secret_name(name)),
        ):
            with contextlib.suppress(NotFound):
                await svc.delete(ADMIN, key)
        await mirror.mirror_pods(objects, namespace, name, None)
        assert REPLICA_SET is not None
        for rs in await jobsync.owned(objects, REPLICA_SET, namespace, "Deployment", name):
            with contextlib.suppress(NotFound):
                await objects.delete(REPLICA_SET, namespace, rs["metadata"]["name"])
    else:
        await jobsync.delete_runs(svc, objects, served.kind, namespace, name)


async def _disown(objects: ClusterObjects, served: Served, items: list[dict[str, Any]]) -> None:
    for item in items:
        meta = {k: v for k, v in item["metadata"].items() if k != "ownerReferences"}
        owner = (item["metadata"].get("ownerReferences") or [{}])[0]
        if served.kind == "Pod":  # still its owner's replica: not a bare Pod to run anew
            was = f"{owner.get('kind')}/{owner.get('name')}"
            meta["annotations"] = {**(meta.get("annotations") or {}), barepods.ORPHANED: was}
        with contextlib.suppress(NotFound, Conflict):
            await objects.update(served, {**item, "metadata": meta})


async def orphan(
    svc: Service, objects: ClusterObjects, served: Served, namespace: str, name: str
) -> None:
    """Leave what ``namespace/name`` made running, no longer its (see the module)."""
    assert POD is not None and REPLICA_SET is not None and JOB is not None
    if served.kind == "Deployment":
        sets = await jobsync.owned(objects, REPLICA_SET, namespace, "Deployment", name)
        await _disown(objects, REPLICA_SET, sets)
        await _disown(objects, POD, await jobsync.owned(objects, POD, namespace, served.kind, name))
        return
    job_names = [name]
    if served.kind == "CronJob":
        runs = await jobsync.owned(objects, JOB, namespace, "CronJob", name)
        await _disown(objects, JOB, runs)
        job_names = [j["metadata"]["name"] for j in runs]
    for job_name in job_names:
        await _disown(objects, POD, await jobsync.owned(objects, POD, namespace, "Job", job_name))
    key = jobsync.kled_key(objects, served.kind, namespace, name)
    for app in (await svc.store.list("App", team=key.team, environment=key.environment)).items:
        labels = dict(app["metadata"].get("labels") or {})
        if labels.get(JOB_LABEL) != key.name:
            continue
        labels[ORPHANED_JOB] = labels.pop(JOB_LABEL)
        changed = {**app, "metadata": {**app["metadata"], "labels": labels}}
        changed.pop("status", None)
        with contextlib.suppress(NotFound, Conflict):
            await svc.store.update(changed, expected_version=app["metadata"]["resourceVersion"])
