"""The async shell of ``workloads``: Deployments written as Apps, Apps read back as Pods.

``sync_deployment`` runs after each write of a Deployment (and after its deletion): it
makes the cluster's environment for the namespace and applies the App, through the service
layer as the system, so scheduling, IPAM and the agents do the rest. ``WorkloadMirror``
follows the store's event log for Apps a cluster owns (by label) and keeps the cluster's
Pods and each Deployment's ``status`` equal to what the App's status says, so that
``kubectl get pods -w`` and ``kubectl wait`` see replicas start, become ready and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from kled.api.service import ADMIN, Service
from kled.control.jobs import JOB_LABEL
from kled.errors import Conflict, KledError, NotFound
from kled.kube import barepods, events, history, jobsync, routing, workloads
from kled.kube.environments import ensure_environment
from kled.kube.objects import ClusterObjects
from kled.kube.served import by_kind
from kled.kube.status import KubeError
from kled.resources import clusterservices
from kled.store.objects import Key

log = logging.getLogger(__name__)

DEPLOYMENT = by_kind("apps/v1", "Deployment")
POD = by_kind("v1", "Pod")
CONFIG_MAP = by_kind("v1", "ConfigMap")
SECRET = by_kind("v1", "Secret")
SERVICE = by_kind("v1", "Service")
RESYNC_SECONDS = 30.0


async def lookup_table(objects: ClusterObjects, namespace: str) -> workloads.Lookup:
    assert CONFIG_MAP is not None and SECRET is not None
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for served in (CONFIG_MAP, SECRET):
        items, _ = await objects.list(served, namespace)
        for item in items:
            found[(served.kind, item["metadata"]["name"])] = item

    def lookup(kind: str, ns: str, name: str) -> dict[str, Any] | None:
        return found.get((kind, name)) if ns == namespace else None

    return lookup


async def sync_deployment(svc: Service, objects: ClusterObjects, namespace: str, name: str) -> None:
    """Make the App of Deployment ``namespace/name`` match it (or go, with it)."""
    assert DEPLOYMENT is not None
    env = workloads.environment_name(objects.cluster, namespace)
    key = Key("App", objects.team, env, workloads.app_name(name))
    deployment = await objects.find(DEPLOYMENT, namespace, name)
    sealed_key = Key("Secret", objects.team, env, workloads.env_secret_name(name))
    if deployment is None:
        with contextlib.suppress(NotFound):
            await svc.delete(ADMIN, key)
        with contextlib.suppress(NotFound):
            await svc.delete(ADMIN, sealed_key)
        await prune_derived(svc, objects.team, env, workloads.app_name(name), set())
        await mirror_pods(objects, namespace, name, None)
        await history.sync(objects, namespace, name)
        return
    await ensure_environment(svc, objects, namespace)
    lookup = await lookup_table(objects, namespace)
    app = workloads.app_doc(objects.team, objects.cluster, deployment, lookup)
    assert SERVICE is not None
    services, _ = await objects.list(SERVICE, namespace)
    picked = routing.routed(objects.cluster, deployment, services)
    if picked:  # the cluster Services that route to its pods, for the gateways and DNS
        clusterservices.with_services(app, picked)
    derived = workloads.derived_docs(objects.team, objects.cluster, deployment, lookup)
    for doc in derived:  # before the App that names them
        await svc.apply(ADMIN, doc)
    await svc.apply(ADMIN, app)
    keep = {(d["kind"], d["metadata"]["name"]) for d in derived}
    if ("Secret", sealed_key.name) not in keep:
        with contextlib.suppress(NotFound):
            await svc.delete(ADMIN, sealed_key)
    await prune_derived(svc, objects.team, env, app["metadata"]["name"], keep)
    await history.sync(objects, namespace, name)
    # an App the write left as it was sends no event (a Deployment applied again after an
    # orphaning delete): its pods are adopted, and the status written, now
    running = await svc.store.find(key)
    if running is not None:
        await mirror_pods(objects, namespace, name, running)


async def prune_derived(
    svc: Service, team: str, env: str, app: str, keep: set[tuple[str, str]]
) -> None:
    """Delete the Configs and Secrets made for the Deployment's App that it no longer uses."""
    for kind in ("Config", "Secret"):
        page = await svc.store.list(kind, team, env)
        for doc in page.items:
            labels = doc["metadata"].get("labels") or {}
            name = doc["metadata"]["name"]
            if labels.get(workloads.DEPLOYMENT_LABEL) == app and (kind, name) not in keep:
                with contextlib.suppress(NotFound):
                    await svc.delete(ADMIN, Key(kind, team, env, name))


async def sync_services(svc: Service, objects: ClusterObjects, namespace: str) -> None:
    """After a Service, ConfigMap or Secret of ``namespace`` changed: each Deployment's
    App carries the Services that now pick its pods (and no longer those that do not) and
    the current data of the ConfigMaps and Secrets it uses. A Deployment that refers to
    one that is gone keeps running what it had (a warning in the log)."""
    assert DEPLOYMENT is not None
    deployments, _ = await objects.list(DEPLOYMENT, namespace)
    for deployment in deployments:
        try:
            await sync_deployment(svc, objects, namespace, deployment["metadata"]["name"])
        except KubeError as e:
            log.warning("kube: deployment %s/%s: %s", namespace,
                        deployment["metadata"]["name"], e.message)  # fmt: skip


async def delete_namespace_apps(svc: Service, objects: ClusterObjects, namespace: str) -> None:
    env = workloads.environment_name(objects.cluster, namespace)
    with contextlib.suppress(NotFound):
        await svc.delete(ADMIN, Key("Environment", objects.team, "", env))


async def mirror_pods(
    objects: ClusterObjects, namespace: str, name: str, app: dict[str, Any] | None
) -> None:
    """The Pods and status of Deployment ``namespace/name`` from its App's status."""
    assert DEPLOYMENT is not None and POD is not None
    deployment = await objects.find(DEPLOYMENT, namespace, name)
    wanted = workloads.pods(deployment, app) if deployment and app else []
    by_name = {p["metadata"]["name"]: p for p in wanted}
    current, _ = await objects.list(POD, namespace)
    for pod in current:
        owners = pod["metadata"].get("ownerReferences") or []
        if not any(o.get("kind") == "Deployment" and o.get("name") == name for o in owners):
            continue
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
        orphaned = not existing["metadata"].get("ownerReferences")  # adopted again
        if existing.get("spec") != pod["spec"] or orphaned:  # placed on a node since
            meta = {**existing["metadata"], "ownerReferences": pod["metadata"]["ownerReferences"]}
            with contextlib.suppress(NotFound, Conflict):
                await objects.update(POD, {**pod, "metadata": meta})
        if existing.get("status") != pod["status"]:
            with contextlib.suppress(NotFound):
                await objects.update_status(POD, namespace, pod_name, pod["status"])
        now = {**pod, "metadata": existing["metadata"]}
        await events.record(objects, events.lifecycle(existing, now))
    if deployment is not None:
        status = workloads.deployment_status(deployment, app)
        if deployment.get("status") != status:
            with contextlib.suppress(NotFound):
                await objects.update_status(DEPLOYMENT, namespace, name, status)
            await history.sync(objects, namespace, name)


class WorkloadMirror:
    """Follows the event log; each change to a cluster-owned App refreshes its Pods."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kube-workload-mirror")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        store = self.svc.store
        last = await store.revision()
        await self._resync()
        while True:
            try:
                batch = await store.events_after(last)
                for event in batch:
                    last = event.seq
                    labels = event.object.get("metadata", {}).get("labels") or {}
                    if event.kind == "App" and barepods.POD_LABEL in labels:
                        app = None if event.type == "DELETED" else event.object
                        await self._mirror_bare(event.team, labels, app)
                    elif event.kind == "App" and JOB_LABEL in labels:  # a Job's attempt
                        await jobsync.on_event(self.svc, event)
                    elif event.kind == "App" and workloads.CLUSTER_LABEL in labels:
                        app = None if event.type == "DELETED" else event.object
                        await self._mirror(event.team, labels, app)
                    elif event.kind in ("Job", "App"):  # batch/v1 Jobs: views of Kled Jobs
                        await jobsync.on_event(self.svc, event)
                if len(batch) < 500:
                    await store.wait_for_change(RESYNC_SECONDS)
            except asyncio.CancelledError:
                raise
            except KledError as e:  # a compacted log, a store hiccup: read everything again
                log.warning("kube mirror: %s; resyncing", e)
                last = await store.revision()
                await self._resync()
                await asyncio.sleep(1)

    async def _resync(self) -> None:
        page = await self.svc.store.list("App")
        for app in page.items:
            labels = app["metadata"].get("labels") or {}
            if barepods.POD_LABEL in labels:
                await self._mirror_bare(app["metadata"].get("team") or "", labels, app)
            elif workloads.CLUSTER_LABEL in labels and JOB_LABEL not in labels:
                await self._mirror(app["metadata"].get("team") or "", labels, app)
        await jobsync.resync(self.svc)

    async def _mirror_bare(
        self, team: str, labels: dict[str, str], app: dict[str, Any] | None
    ) -> None:
        objects = ClusterObjects(self.svc.store, team, labels[workloads.CLUSTER_LABEL])
        namespace = labels.get(workloads.NAMESPACE_LABEL, "default")
        try:
            await barepods.mirror_status(objects, namespace, labels[barepods.POD_LABEL], app)
        except KledError as e:
            log.warning("kube mirror: pod %s/%s: %s", namespace, labels[barepods.POD_LABEL], e)

    async def _mirror(self, team: str, labels: dict[str, str], app: dict[str, Any] | None) -> None:
        objects = ClusterObjects(self.svc.store, team, labels[workloads.CLUSTER_LABEL])
        try:
            await mirror_pods(
                objects,
                labels.get(workloads.NAMESPACE_LABEL, "default"),
                labels.get(workloads.DEPLOYMENT_LABEL, ""),
                app,
            )
        except KledError as e:
            log.warning(
                "kube mirror: app/%s/%s: %s", team, labels.get(workloads.DEPLOYMENT_LABEL), e
            )
