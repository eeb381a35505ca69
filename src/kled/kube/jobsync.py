"""The async shell of ``kube.jobs``: Jobs and CronJobs written as Kled Jobs, read back.

``sync`` runs after each write of a Job or CronJob (and after its deletion): it applies
the Kled Job (and the Kled Secret of its variables from Secret keys) through the service
layer as the system, so the jobs controller, the scheduler and the agents do the rest.
``refresh`` runs from the workload mirror for each change to a cluster's Kled Job or to
one of its attempts' Apps: the Job's ``status`` and Pods (and for a CronJob, the Job of
each run in its history, and its ``status``) are made equal to what the Kled Job says.
"""

from __future__ import annotations

import contextlib
from typing import Any

from kled.api.service import ADMIN, Service
from kled.control.jobs import JOB_LABEL
from kled.errors import Conflict, NotFound
from kled.kube import events, jobs, jobviews, workloads
from kled.kube.environments import ensure_environment
from kled.kube.objects import ClusterObjects
from kled.kube.served import Served, by_kind
from kled.store.objects import Event, Key

JOB = by_kind("batch/v1", "Job")
CRON_JOB = by_kind("batch/v1", "CronJob")
POD = by_kind("v1", "Pod")
CONFIG_MAP = by_kind("v1", "ConfigMap")
SECRET = by_kind("v1", "Secret")


async def _lookup(objects: ClusterObjects, namespace: str) -> workloads.Lookup:
    assert CONFIG_MAP is not None and SECRET is not None
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for served in (CONFIG_MAP, SECRET):
        items, _ = await objects.list(served, namespace)
        for item in items:
            found[(served.kind, item["metadata"]["name"])] = item

    def lookup(kind: str, ns: str, name: str) -> dict[str, Any] | None:
        return found.get((kind, name)) if ns == namespace else None

    return lookup


def kled_key(objects: ClusterObjects, kind: str, namespace: str, name: str) -> Key:
    env = workloads.environment_name(objects.cluster, namespace)
    return Key("Job", objects.team, env, jobs.kled_name(kind, name))


async def sync(
    svc: Service, objects: ClusterObjects, served: Served, namespace: str, name: str
) -> None:
    """Make the Kled Job of Job or CronJob ``namespace/name`` match it (or go, with it)."""
    obj = await objects.find(served, namespace, name)
    key = kled_key(objects, served.kind, namespace, name)
    env = workloads.environment_name(objects.cluster, namespace)
    sealed_key = Key("Secret", objects.team, env, jobs.env_secret_name(served.kind, name))
    if obj is None:
        await delete_runs(svc, objects, served.kind, namespace, name)
        return
    if jobs.RUN_ANNOTATION in (obj["metadata"].get("annotations") or {}):
        return  # a CronJob's run: its CronJob's Kled Job runs it
    await ensure_environment(svc, objects, namespace)
    lookup = await _lookup(objects, namespace)
    doc = jobs.kled_job(objects.team, objects.cluster, obj, lookup)
    sealed = jobs.env_secret(objects.team, objects.cluster, obj, lookup)
    if sealed is not None:
        await svc.apply(ADMIN, sealed)
    await svc.apply(ADMIN, doc)
    if sealed is None:
        with contextlib.suppress(NotFound):
            await svc.delete(ADMIN, sealed_key)
    await refresh(svc, key)


async def delete_runs(
    svc: Service, objects: ClusterObjects, kind: str, namespace: str, name: str
) -> None:
    """What a deleted Job or CronJob leaves: its Kled Job (whose controller stops and
    deletes the attempts' Apps), its Secret, its Pods and a CronJob's Jobs."""
    assert JOB is not None
    env = workloads.environment_name(objects.cluster, namespace)
    for key in (
        kled_key(objects, kind, namespace, name),
        Key("Secret", objects.team, env, jobs.env_secret_name(kind, name)),
    ):
        with contextlib.suppress(NotFound):
            await svc.delete(ADMIN, key)
    if kind == "Job":
        await sync_pods(objects, namespace, name, [])
        return
    for job in await owned(objects, JOB, namespace, "CronJob", name):
        with contextlib.suppress(NotFound):
            await objects.delete(JOB, namespace, job["metadata"]["name"])
        await sync_pods(objects, namespace, job["metadata"]["name"], [])


async def owned(
    objects: ClusterObjects, served: Served, namespace: str, kind: str, name: str
) -> list[dict[str, Any]]:
    """The objects of ``served`` whose controller is ``kind`` ``name``."""
    items, _ = await objects.list(served, namespace)
    return [
        item
        for item in items
        if any(
            o.get("kind") == kind and o.get("name") == name
            for o in item["metadata"].get("ownerReferences") or []
        )
    ]


async def sync_pods(
    objects: ClusterObjects, namespace: str, job: str, wanted: list[dict[str, Any]]
) -> None:
    """The Pods Job ``job`` controls are ``wanted`` (created, updated, deleted)."""
    assert POD is not None
    by_name = {p["metadata"]["name"]: p for p in wanted}
    for pod in await owned(objects, POD, namespace, "Job", job):
        if pod["metadata"]["name"] not in by_name:
            with contextlib.suppress(NotFound):
                await objects.delete(POD, namespace, pod["metadata"]["name"])
                await events.record(objects, events.lifecycle(pod, None))
    for pod_name, pod in by_name.items():
        existing = await objects.find(POD, namespace, pod_name)
        if existing is None:
            with contextlib.suppress(Conflict):
                created = await objects.create(POD, pod)
                await events.record(objects, events.lifecycle(None, created))
            continue
        if existing.get("spec") != pod["spec"]:
            with contextlib.suppress(NotFound, Conflict):
                await objects.update(POD, {**pod, "metadata": {**existing["metadata"]}})
        if existing.get("status") != pod["status"]:
            with contextlib.suppress(NotFound):
                await objects.update_status(POD, namespace, pod_name, pod["status"])
        now = {**pod, "metadata": existing["metadata"]}
        await events.record(objects, events.lifecycle(existing, now))


async def _set_status(
    objects: ClusterObjects, served: Served, obj: dict[str, Any], status: dict[str, Any]
) -> None:
    if (obj.get("status") or {}) != status:
        with contextlib.suppress(NotFound):
            meta = obj["metadata"]
            await objects.update_status(served, meta.get("namespace", ""), meta["name"], status)


async def refresh(svc: Service, key: Key) -> None:
    """The views of the Kled Job ``key`` (a cluster's Job or CronJob): status and Pods."""
    assert JOB is not None and CRON_JOB is not None
    kled = await svc.store.find(key)
    labels = ((kled or {}).get("metadata") or {}).get("labels") or {}
    if kled is None or workloads.CLUSTER_LABEL not in labels:
        return
    objects = ClusterObjects(svc.store, key.team, labels[workloads.CLUSTER_LABEL])
    namespace = labels.get(workloads.NAMESPACE_LABEL, "default")
    kind, name = labels.get(jobs.KIND_LABEL, "Job"), labels.get(jobs.NAME_LABEL, "")
    apps = {
        a["metadata"]["name"]: a
        for a in (await svc.store.list("App", team=key.team, environment=key.environment)).items
        if (a["metadata"].get("labels") or {}).get(JOB_LABEL) == key.name
    }
    status = kled.get("status") or {}
    runs = status.get("runs") or []
    if kind == "Job":
        job = await objects.find(JOB, namespace, name)
        if job is not None:
            run = runs[-1] if runs else None
            await _set_status(objects, JOB, job, jobviews.job_status(job, run, apps, key.name))
            await sync_pods(objects, namespace, name, jobviews.job_pods(job, run, apps, key.name))
        return
    cron = await objects.find(CRON_JOB, namespace, name)
    if cron is None:
        return
    shown = await owned(objects, JOB, namespace, "CronJob", name)
    kept = {jobviews.run_job_name(name, int(r["run"])): r for r in runs}
    for job in shown:
        if job["metadata"]["name"] not in kept:  # gone from the history
            with contextlib.suppress(NotFound):
                await objects.delete(JOB, namespace, job["metadata"]["name"])
            await sync_pods(objects, namespace, job["metadata"]["name"], [])
    present = {j["metadata"]["name"]: j for j in shown}
    views = []
    for job_name, run in kept.items():
        job = present.get(job_name)
        if job is None:
            with contextlib.suppress(Conflict):
                job = await objects.create(JOB, jobviews.cron_run_job(cron, run))
        if job is None:
            continue
        views.append(job)
        await _set_status(objects, JOB, job, jobviews.job_status(job, run, apps, key.name))
        await sync_pods(objects, namespace, job_name, jobviews.job_pods(job, run, apps, key.name))
    await _set_status(objects, CRON_JOB, cron, jobviews.cron_status(cron, status, views))


async def on_event(svc: Service, event: Event) -> None:
    """From the workload mirror: a change to a Kled Job or to an App a Kled Job owns."""
    labels = (event.object.get("metadata") or {}).get("labels") or {}
    if event.kind == "Job" and workloads.CLUSTER_LABEL in labels and event.type != "DELETED":
        await refresh(svc, Key("Job", event.team, event.environment, event.name))
    elif event.kind == "App" and labels.get(JOB_LABEL):
        await refresh(svc, Key("Job", event.team, event.environment, str(labels[JOB_LABEL])))


async def resync(svc: Service) -> None:
    for kled in (await svc.store.list("Job")).items:
        if workloads.CLUSTER_LABEL in (kled["metadata"].get("labels") or {}):
            await refresh(svc, Key.of(kled))
