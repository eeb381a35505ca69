"""The workloads controller: apps become replicas on nodes, and agents' reports become status.

It follows the store's event log (a full resync at start, then ``events_after`` from the
revision it started at, woken by ``wait_for_change``) for Apps, Nodes, Configs, Secrets
and Environments. After each batch it re-runs the scheduler (``scheduling``), computes
every node's desired state (``desired``) and hands a node's state to the
:class:`DesiredStateSink` only when that node's replicas actually changed. Placements and
replica states are written to ``App.status`` (``appstatus``), merged with what other
controllers put there.

The other direction comes from whoever consumes the Message Office's streams:
:meth:`WorkloadController.on_heartbeat`, :meth:`~WorkloadController.on_replica_status` and
:meth:`~WorkloadController.on_event` update ``Node.status`` and ``App.status``
idempotently — the same message applied twice changes nothing. A periodic tick turns
silent nodes NotReady and, after the grace period, moves their replicas (``nodes``).

Placements live in ``App.status.replicas[].node``: a restarted controller reads them back
and keeps every replica where it was. It then sends every node its state once, because it
cannot know what its predecessor sent; agents treat an equal state as a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from kled.control import autoscale, rollout
from kled.control.appstatus import Report, add_events, event, fold, is_ready, placement_events
from kled.control.desired import (
    BadReference,
    Ref,
    ReplicaSpecs,
    compute,
    resolve_env,
    same_replicas,
)
from kled.control.nodes import (
    NOT_READY,
    READY,
    NodeTracker,
    add_node_event,
    apply_heartbeat,
    deleting,
    is_newer,
    mark_not_ready,
    node_info,
)
from kled.control.scheduling import AppRequest, NodeInfo, Placement, app_request, schedule
from kled.control.sinks import put_all
from kled.control.usage import UsageBook
from kled.errors import Conflict, Gone, KledError, NotFound, Unavailable
from kled.resources.clusterservices import CLUSTER_LABEL
from kled.resources.hoststate import (
    AgentEvent,
    HostDesiredState,
    NodeHeartbeat,
    ReplicaStatus,
    ReplicaStatusReport,
)
from kled.store.objects import Event, Key, Store

log = logging.getLogger(__name__)

_KINDS = ("App", "Node", "Config", "Secret", "Environment", "Cluster")
_STATUS_TRIES = 8
#: app statuses written in one transaction (placements, replicas' reports)
WRITE_BATCH = 100
#: seconds at least between two steps of the loop (the first after a quiet time at once)
STEP_GAP = 0.05


class DesiredStateSink(Protocol):
    """Where a node's desired state goes (the Message Office's KV bucket, in production)."""

    def put(self, node: str, state: HostDesiredState) -> Awaitable[None] | None: ...


def parse_replica_id(replica_id: str) -> tuple[Ref, int] | None:
    """``team.env.app.index`` → ((team, env, app), index); None if it is not one."""
    parts = replica_id.split(".")
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    return (parts[0], parts[1], parts[2]), int(parts[3])


def _now() -> datetime:
    return datetime.now(UTC)


def _app_inputs(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    """What, when it changes, means an app must be scheduled and resolved again."""
    meta = doc.get("metadata") or {}
    return (doc.get("spec"), meta.get("annotations"), meta.get("generation"), meta.get("uid"))


#: seconds between two writes of a node's lastHeartbeat when nothing else changed
HEARTBEAT_WRITE_EVERY = 15.0


def _version(doc: dict[str, Any]) -> int:
    try:
        return int((doc.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _only_time_moved(before: dict[str, Any], after: dict[str, Any]) -> bool:
    rest = {k: v for k, v in after.items() if k != "lastHeartbeat"}
    return rest == {k: v for k, v in before.items() if k != "lastHeartbeat"}


def _name(ref: Ref) -> str:
    return f"app/{ref[0]}/{ref[1]}.{ref[2]}"


class WorkloadController:
    def __init__(
        self,
        store: Store,
        sink: DesiredStateSink,
        *,
        not_ready_after: float = 10.0,
        reschedule_after: float = 30.0,
        tick: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        autoscale_every: float = 15.0,
    ) -> None:
        self.store = store
        self.sink = sink
        self.seq = 0
        self.tracker = NodeTracker(not_ready_after, reschedule_after)
        self._tick = tick
        self._clock = clock
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._apps: dict[Ref, dict[str, Any]] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._configs: dict[Ref, dict[str, Any]] = {}
        self._secrets: dict[Ref, dict[str, Any]] = {}
        self._envs: dict[Ref, dict[str, Any]] = {}
        #: each Kled Cluster's ``spec.nodeSelector`` by (team, cluster): where its apps go
        self._clusters: dict[tuple[str, str], dict[str, str]] = {}
        self._placements: dict[Ref, list[Placement]] = {}
        #: the revision (template hash) each replica runs: index → hash (``rollout``)
        self._revisions: dict[Ref, dict[int, str]] = {}
        #: what each revision an app's replicas run is: hash → (app document, environment);
        #: an old revision's replicas keep the environment they were started with
        self._known: dict[Ref, dict[str, tuple[dict[str, Any], dict[str, str]]]] = {}
        #: each app's template and revision hash while its spec stays (``rollout.Templates``)
        self._templates = rollout.Templates()
        #: each replica's spec while its app and inputs stay (``desired.ReplicaSpecs``)
        self._specs = ReplicaSpecs()
        #: the rollout target of each app, as decided last round
        self._targets: dict[Ref, rollout.Target] = {}
        #: apps whose rollout is not complete: re-planned on readiness news and ticks
        self._rolling: set[Ref] = set()
        #: when a Progressing rollout's deadline runs out (wall time): looked at again then
        self._due: dict[Ref, datetime] = {}
        #: how many replicas each app wants now (``spec.replicas``, or its autoscaler's)
        self._wanted: dict[Ref, int] = {}
        #: the agents' latest usage, from their heartbeats: what the autoscaler reads
        self.usage = UsageBook(clock=clock)
        self._autoscale_every = autoscale_every
        #: autoscaled apps: the last evaluation (our clock), the window's recommendations,
        #: the ``status.autoscale`` to write, and the events of a decision not yet written
        self._scaled_at: dict[Ref, float] = {}
        self._scale_history: dict[Ref, autoscale.History] = {}
        self._scale_status: dict[Ref, dict[str, Any]] = {}
        self._scale_events: dict[Ref, list[dict[str, Any]]] = {}
        #: apps that may scale to zero: (node, connections its gateway counted) last seen,
        #: when a new connection was last seen (our clock), and since when we watch
        self._conns_seen: dict[tuple[Ref, str], int] = {}
        self._active_at: dict[Ref, float] = {}
        self._watched_since: dict[Ref, float] = {}
        #: new connections counted since the last evaluation, and when that was (rate target)
        self._conn_delta: dict[Ref, int] = {}
        self._rate_since: dict[Ref, float] = {}
        self._bad: dict[Ref, BadReference] = {}
        self._sent: dict[str, HostDesiredState] = {}
        self._ready: dict[str, bool] = {}
        self._lost: set[str] = set()
        self._dirty_apps: set[Ref] = set()
        self._dirty = False
        self._generation = 0
        #: the newest document seen of each Node and App (by resourceVersion): a status
        #: that would not change against it needs no read of the store
        self._latest: dict[Key, dict[str, Any]] = {}
        #: node → when its lastHeartbeat was last written (our clock)
        self._heartbeat_written: dict[str, float] = {}
        #: node → the newest heartbeat handled (its own time), written or not
        self._heartbeat_seen: dict[str, datetime] = {}

    # ---- lifetime ------------------------------------------------------------------

    async def start(self) -> None:
        await self.resync()
        self._task = asyncio.create_task(self._run(), name="workloads")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = -STEP_GAP
        while True:
            handled = 0
            try:
                # A burst of writes (a batch apply) is taken a few events at a time, not
                # one reconcile of every app per event: a step at most every STEP_GAP.
                await asyncio.sleep(max(0.0, last + STEP_GAP - loop.time()))
                last = loop.time()
                handled = await self.step()
                await self.tick()
            except Unavailable as e:
                log.warning("workloads: store unavailable (%s); retrying", e)
            except Gone:  # fell behind the compacted event log: list everything again
                log.warning("workloads: events were compacted before being read; resyncing")
                await self.resync()
            except Exception:  # one bad round must not end scheduling for everyone
                log.exception("workloads: reconcile failed; retrying")
            if not handled:
                await self.store.wait_for_change(self._tick)

    async def resync(self) -> None:
        """Read everything from the store and reconcile, as after a restart."""
        async with self._lock:
            self.seq = await self.store.revision()
            self._apps.clear()
            self._nodes.clear()
            self._configs.clear()
            self._secrets.clear()
            self._envs.clear()
            self._clusters.clear()
            self._placements.clear()
            self._sent.clear()
            for kind in _KINDS:
                for doc in (await self.store.list(kind)).items:
                    self._remember(kind, doc)
            for ref, app in self._apps.items():
                entries = [
                    e
                    for e in (app.get("status") or {}).get("replicas") or []
                    if isinstance(e, dict) and "index" in e
                ]
                self._placements[ref] = [
                    Placement(int(e["index"]), str(e["node"])) for e in entries if e.get("node")
                ]
                # No revision (written before rollouts existed): it runs the spec.
                self._revisions[ref] = {
                    int(e["index"]): str(e["revision"]) for e in entries if e.get("revision")
                }
            self.tracker.start(
                (
                    (n, (d.get("status") or {}).get("phase") == READY)
                    for n, d in self._nodes.items()
                ),
                self._clock(),
            )
            self._dirty_apps = set(self._apps)
            self._dirty = True
            await self._reconcile()
        log.info(
            "workloads: resynced %d apps on %d nodes at revision %d",
            len(self._apps),
            len(self._nodes),
            self.seq,
        )

    # ---- following the store ---------------------------------------------------------

    async def step(self, limit: int = 500) -> int:
        """Handle the events after ``seq`` and reconcile if needed; returns how many."""
        async with self._lock:
            batch = await self.store.events_after(self.seq, limit)
            for ev in batch:
                if ev.kind in _KINDS:
                    try:
                        await self._handle(ev)
                    except Unavailable:
                        raise  # retried from this event on
                    except KledError as e:
                        log.warning("%s/%s/%s: %s", ev.kind.lower(), ev.team, ev.name, e)
                self.seq = ev.seq
            if self._dirty:
                await self._reconcile()
        return len(batch)

    async def _handle(self, ev: Event) -> None:
        doc = ev.object
        if ev.type == "DELETED" or deleting(doc):
            self._forget(ev.kind, (ev.team, ev.environment, ev.name))
            return
        if ev.kind == "Secret":
            # The event log carries Secrets redacted: read the real values.
            found = await self.store.find(Key("Secret", ev.team, ev.environment, ev.name))
            if found is None:
                self._forget(ev.kind, (ev.team, ev.environment, ev.name))
                return
            doc = found
        self._remember(ev.kind, doc)

    def _keep_latest(self, key: Key, doc: dict[str, Any] | None) -> None:
        if doc is None or deleting(doc):
            self._latest.pop(key, None)
            return
        held = self._latest.get(key)
        if held is None or _version(held) <= _version(doc):
            self._latest[key] = doc

    def _remember(self, kind: str, doc: dict[str, Any]) -> None:
        if kind in ("Node", "App"):
            m = doc["metadata"]
            self._keep_latest(
                Key(kind, str(m.get("team") or ""), str(m.get("environment") or ""), m["name"]),
                doc,
            )
        if deleting(doc):
            return
        meta = doc["metadata"]
        if kind == "Node":
            name = str(meta["name"])
            old = self._nodes.get(name)
            self._nodes[name] = doc
            phase = (doc.get("status") or {}).get("phase")
            if phase == READY and name not in self.tracker.heard:
                self.tracker.heartbeat(name, self._clock())  # Ready by another writer
            if old is None or node_info(old) != node_info(doc):
                self._dirty = True
            return
        ref = (str(meta.get("team") or ""), str(meta.get("environment") or ""), str(meta["name"]))
        if kind == "Cluster":
            selector = dict((doc.get("spec") or {}).get("nodeSelector") or {})
            if self._clusters.get((ref[0], ref[2])) != selector:
                self._clusters[(ref[0], ref[2])] = selector
                self._dirty = True
            return
        if kind == "App":
            old = self._apps.get(ref)
            self._apps[ref] = doc
            if old is None or _app_inputs(old) != _app_inputs(doc):
                self._dirty_apps.add(ref)
                self._dirty = True
            return
        table = {"Config": self._configs, "Secret": self._secrets}.get(kind)
        if kind == "Environment":
            table, ref = self._envs, (ref[0], ref[2], "")
        if table is None:
            return
        before = table.get(ref)
        table[ref] = doc
        if before is None or _data(before) != _data(doc):
            self._touch_environment(ref[0], ref[1])

    def _forget(self, kind: str, ref: Ref) -> None:
        self._latest.pop(Key(kind, *ref), None)
        if kind == "Node":
            if self._nodes.pop(ref[2], None) is not None:
                self.tracker.forget(ref[2])
                self._dirty = True
        elif kind == "App":
            self._apps.pop(ref, None)
            self._placements.pop(ref, None)
            self._revisions.pop(ref, None)
            self._known.pop(ref, None)
            self._templates.forget(ref)
            self._specs.forget(ref)
            self._targets.pop(ref, None)
            self._rolling.discard(ref)
            self._due.pop(ref, None)
            self._wanted.pop(ref, None)
            for table in (self._scaled_at, self._scale_history, self._scale_status):
                table.pop(ref, None)
            self._bad.pop(ref, None)
            self._dirty = True
        elif kind == "Cluster":
            if self._clusters.pop((ref[0], ref[2]), None) is not None:
                self._dirty = True
        elif kind == "Environment":
            if self._envs.pop((ref[0], ref[2], ""), None) is not None:
                self._touch_environment(ref[0], ref[2])
        else:
            table = self._configs if kind == "Config" else self._secrets
            if table.pop(ref, None) is not None:
                self._touch_environment(ref[0], ref[1])

    def _touch_environment(self, team: str, env: str) -> None:
        for ref in self._apps:
            if ref[0] == team and ref[1] == env:
                self._dirty_apps.add(ref)
                self._dirty = True

    # ---- placing and sending ------------------------------------------------------------

    def _request(self, ref: Ref, app: dict[str, Any], indexes: list[int]) -> AppRequest:
        """The scheduler's view of ``app``; a Kled Cluster's app with its cluster's
        ``nodeSelector`` (``scheduling.admits``)."""
        request = app_request(app, self._placements.get(ref, []), indexes)
        cluster = ((app["metadata"].get("labels") or {}).get(CLUSTER_LABEL)) or None
        selector = self._clusters.get((ref[0], str(cluster))) if cluster else None
        return replace(request, cluster_selector=selector) if selector else request

    async def tick(self) -> None:
        """Turn silent nodes NotReady; after the grace period, move their replicas."""
        async with self._lock:
            now = self._clock()
            for name, silent in self.tracker.silent(now).items():
                doc = self._nodes.get(name)
                if doc is None:
                    self.tracker.forget(name)
                    continue
                self.tracker.went_not_ready(name, now)
                if (doc.get("status") or {}).get("phase") != NOT_READY:
                    log.warning("node//%s: no heartbeat for %.0fs: NotReady", name, silent)
                    written = await self._set_status(Key("Node", "", "", name), _not_ready(silent))
                    if written is not None:
                        self._remember("Node", written)
            if self.tracker.lost(now) != self._lost:
                self._dirty = True
            wall = _now()
            for ref in [r for r, when in self._due.items() if when <= wall]:
                # A rollout's deadline ran out without news: look again.
                del self._due[ref]
                self._dirty_apps.add(ref)
                self._dirty = True
            self._autoscale(now)
            if self._dirty:
                await self._reconcile()

    async def _reconcile(self) -> None:
        """Schedule every app, write changed statuses, send changed node states."""
        self._dirty = False
        now = self._clock()
        lost = self.tracker.lost(now)
        infos: dict[str, NodeInfo] = {
            name: node_info(doc, lost=name in lost) for name, doc in self._nodes.items()
        }
        if lost - self._lost:
            log.warning(
                "workloads: nodes lost, moving their replicas: %s", sorted(lost - self._lost)
            )
        self._lost = lost
        wall = _now()
        variants = {ref: self._step(ref, app, wall) for ref, app in self._apps.items()}
        requests = {
            ref: self._request(ref, app, list(self._revisions[ref]))
            for ref, app in self._apps.items()
        }
        plan = schedule(infos.values(), requests.values())
        placements = {ref: plan[req.key] for ref, req in requests.items()}
        states = compute(
            sorted(set(self._nodes) | set(self._sent)),
            self._apps.values(),
            placements,
            configs=self._configs,
            secrets=self._secrets,
            environments=self._envs,
            variants=variants,
            made=self._specs,
        )
        ready = {name: info.ready for name, info in infos.items()}
        flipped = {n for n in set(ready) | set(self._ready) if ready.get(n) != self._ready.get(n)}
        writes: list[tuple[Ref, list[dict[str, Any]]]] = []
        for ref in sorted(self._apps):
            before, after = self._placements.get(ref, []), placements[ref]
            moved = before != after
            if (
                moved
                or ref in self._dirty_apps
                or self._bad.get(ref) != states.bad.get(ref)
                or any(p.node in flipped for p in after)
            ):
                events = placement_events(before, after, wall) if moved else []
                writes.append((ref, events + self._scale_events.pop(ref, [])))
        self._placements = placements
        self._bad = states.bad
        self._ready = ready
        self._dirty_apps.clear()
        await self._send(states.nodes)
        try:
            await self._write_apps([(ref, None, events) for ref, events in writes])
        except KledError as e:
            log.warning("workloads: statuses not written (%s); retrying", e)
            self._dirty_apps.update(ref for ref, _ in writes)
            self._dirty = True

    async def _send(self, states: dict[str, HostDesiredState]) -> None:
        """The nodes whose replicas changed get their new state, all in one hand-over to
        the sink (``sinks.put_all``): a failure leaves them all to the next round."""
        changed: dict[str, HostDesiredState] = {}
        for node, state in states.items():
            if same_replicas(self._sent.get(node), state):
                continue
            self._generation = max(self.seq, self._generation + 1)
            changed[node] = state.model_copy(update={"generation": self._generation})
        try:
            await put_all(self.sink, changed)
        except Exception as e:  # whatever the sink's failure, retry on the next tick
            log.warning("desired states of %s not sent (%s); retrying", ", ".join(changed), e)
            self._dirty = True
            return
        for node, state in changed.items():
            log.info(
                "node//%s: desired state %d: %d replicas",
                node,
                state.generation,
                len(state.replicas),
            )
            if node in self._nodes:
                self._sent[node] = state
            else:
                self._sent.pop(node, None)  # told a deleted node to stop: nothing more to say

    async def _write_app(
        self,
        ref: Ref,
        *,
        reports: Mapping[int, Report] | None = None,
        events: list[dict[str, Any]] | None = None,
    ) -> None:
        change = self._app_change(ref, reports=reports, events=events)
        if change is not None:
            await self._set_status(Key("App", *ref), change)

    async def _write_apps(
        self, items: list[tuple[Ref, Mapping[int, Report] | None, list[dict[str, Any]]]]
    ) -> None:
        """Write the statuses of many apps, ``WRITE_BATCH`` to a transaction (an app's
        own writes one by one again if a batch fails). Raises what a lone write raised."""
        for at in range(0, len(items), WRITE_BATCH):
            chunk = items[at : at + WRITE_BATCH]
            changes = []
            for ref, reports, events in chunk:
                change = self._app_change(ref, reports=reports, events=events)
                key = Key("App", *ref)
                held = self._latest.get(key)
                if change is None or (
                    held is not None and change(held) == (held.get("status") or {})
                ):
                    continue
                changes.append((key, change))
            try:
                written = await self.store.update_statuses(changes)
            except Unavailable:
                raise
            except KledError as e:  # one document out of bounds, say: each alone, as before
                log.warning("workloads: a batch of %d statuses failed (%s)", len(changes), e)
                for ref, reports, events in chunk:
                    await self._write_app(ref, reports=reports, events=events)
                continue
            for key, doc in written.items():
                self._keep_latest(key, doc)

    def _app_change(
        self,
        ref: Ref,
        *,
        reports: Mapping[int, Report] | None = None,
        events: list[dict[str, Any]] | None = None,
    ) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """How an app's status follows from what this controller holds (None: unplaced)."""
        placements = self._placements.get(ref)
        if placements is None:
            return None

        revisions = self._revisions.get(ref)
        target = self._targets.get(ref)
        if target is not None:
            target = replace(target, now=_now())

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            return fold(
                doc,
                placements,
                reports=reports,
                node_ready=self._ready,
                bad=self._bad.get(ref),
                events=events or [],
                revisions=revisions,
                rollout=target,
                replicas=self._wanted.get(ref),
                autoscale=self._scale_status.get(ref),
            )

        return change

    async def _set_status(
        self, key: Key, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Write a new status computed from the current document; retry on a race.

        Nothing is read when the status would not change against the newest document we
        hold: the store's copy is at least as new, and only we write the fields that
        ``change`` computes (other writers' fields are carried over, not compared)."""
        held = self._latest.get(key)
        if held is not None and change(held) == (held.get("status") or {}):
            return held
        for _ in range(_STATUS_TRIES):
            doc = await self.store.find(key)
            if doc is None or deleting(doc):
                return doc
            status = change(doc)
            if status == (doc.get("status") or {}):
                return doc
            try:
                written = await self.store.update_status(
                    key, status, expected_version=doc["metadata"]["resourceVersion"]
                )
                self._keep_latest(key, written)
                return written
            except NotFound:
                return None
            except Conflict:
                continue  # someone else wrote status meanwhile: compute again
        log.warning("workloads: %s: status kept changing, gave up this round", key)
        return None

    # ---- rollouts ---------------------------------------------------------------------------

    def _step(
        self, ref: Ref, app: dict[str, Any], now: datetime
    ) -> dict[int, tuple[dict[str, Any], dict[str, str]]]:
        """Take one rollout step for ``app``: set which revision each replica runs
        (``_revisions``) and the app's target; return the documents and environments of
        the replicas that run another revision than the spec's."""
        spec = app.get("spec") or {}
        status = (self._latest.get(Key("App", *ref)) or app).get("status") or {}
        wanted = self._wanted_now(ref, app, status)
        self._wanted[ref] = wanted
        env_doc = self._envs.get((ref[0], ref[1], "")) or {}
        variables = (env_doc.get("spec") or {}).get("variables") or {}
        env = resolve_env(app, self._configs, self._secrets, variables)
        resolved = env if isinstance(env, dict) else None
        tmpl, target = self._templates.of(ref, app, resolved or {})
        held = self._revisions.get(ref, {})
        ready = {
            int(e["index"]) for e in status.get("replicas") or [] if "index" in e and is_ready(e)
        }
        # No revision: written before rollouts, or while the app could not be resolved;
        # such a replica runs (or will run) the spec as it is.
        current = [rollout.Replica(i, held.get(i) or target, i in ready) for i in sorted(held)]
        if resolved is None:
            # A reference that does not resolve: the app is shown Failed (``desired``) and
            # nothing of it is sent; its replicas get the revision it will have once the
            # reference resolves.
            blank = [rollout.Replica(r.index, "", r.ready) for r in current]
            self._revisions[ref] = rollout.plan(wanted, "", blank, rollout.Strategy())
            self._targets.pop(ref, None)
            self._rolling.discard(ref)
            self._due.pop(ref, None)
            return {}
        history, number = rollout.record(
            status.get("revisions") or [], target, tmpl, now.isoformat().replace("+00:00", "Z")
        )
        paused = spec.get("paused") is True
        deadline = int(spec.get("progressDeadlineSeconds") or rollout.DEFAULT_DEADLINE)
        before = rollout.progress(
            status.get("rollout"),
            revision=number,
            replicas=wanted,
            target=target,
            current=current,
            paused=paused,
            deadline_seconds=deadline,
            now=now,
        )
        plan = rollout.plan(
            wanted,
            target,
            current,
            rollout.strategy_of(spec),
            hold=rollout.holds(before.phase),
        )
        self._revisions[ref] = plan
        self._targets[ref] = rollout.Target(target, number, history, paused, deadline, now)
        known = self._known.setdefault(ref, {})
        known[target] = (app, resolved)
        if all(rev == target for rev in plan.values()) and ready >= set(plan):
            self._rolling.discard(ref)
        else:
            self._rolling.add(ref)
        if ref in self._rolling and before.phase == rollout.PROGRESSING:
            since = datetime.fromisoformat(before.since.replace("Z", "+00:00"))
            self._due[ref] = since + timedelta(seconds=deadline + 0.5)
        else:
            self._due.pop(ref, None)
        variants: dict[int, tuple[dict[str, Any], dict[str, str]]] = {}
        for index, rev in plan.items():
            if rev == target:
                continue
            found = known.get(rev) or self._rebuild(ref, app, rev, history)
            if found is not None:
                known[rev] = found
                variants[index] = found
        for rev in list(known):
            if rev != target and rev not in plan.values():
                del known[rev]
        return variants

    # ---- autoscaling --------------------------------------------------------------------------

    def _wanted_now(self, ref: Ref, app: dict[str, Any], status: Mapping[str, Any]) -> int:
        """``spec.replicas``, or the autoscaler's latest decision (ours, else the status's)."""
        decided = dict(status)
        if ref in self._scale_status:
            decided["autoscale"] = self._scale_status[ref]
        return autoscale.wanted_replicas({"spec": app.get("spec") or {}, "status": decided})

    def _autoscale(self, now: float) -> None:
        """Evaluate every autoscaled app whose period is up; a change of its replica
        count makes it dirty, and the decision is an event."""
        for ref, app in self._apps.items():
            target = autoscale.target_of(app, app_request(app, []).cpu_millicores)
            if target is None:
                for table in (self._scaled_at, self._scale_history, self._scale_status,
                              self._active_at, self._watched_since, self._rate_since,
                              self._conn_delta):  # fmt: skip
                    table.pop(ref, None)
                continue
            if now - self._scaled_at.get(ref, -math.inf) < self._autoscale_every:
                continue
            self._scaled_at[ref] = now
            status = (self._latest.get(Key("App", *ref)) or app).get("status") or {}
            current = self._wanted_now(ref, app, status)
            mine = set(self._revisions.get(ref, {}))
            samples = [
                row.usage.cpu_millicores
                for row in self.usage.replicas(ref[0])
                if (row.environment, row.app) == (ref[1], ref[2])
                and row.index in mine
                and row.ready
                and row.usage is not None
                and row.usage.cpu_millicores is not None
            ]
            proposal = autoscale.recommend(current, samples, target)
            rate_from = self._rate_since.get(ref)
            self._rate_since[ref] = now
            grown = self._conn_delta.pop(ref, 0)
            rate = grown / (now - rate_from) if rate_from is not None and now > rate_from else None
            by_rate = autoscale.recommend_for_rate(current, rate, target)
            if by_rate is not None:
                proposal = max(proposal, by_rate) if samples else by_rate
            decided, history = autoscale.decide(
                current, proposal, self._scale_history.get(ref, autoscale.History()), now, target
            )
            self._scale_history[ref] = history
            used = autoscale.utilization(samples, target.request_millicores)
            since = self._watched_since.setdefault(ref, now)
            to_zero = current > 0 and autoscale.idle(target, self._active_at.get(ref), since, now)
            if to_zero:
                decided = 0
            before = self._scale_status.get(ref) or dict(status.get("autoscale") or {})
            block = {
                "desiredReplicas": decided,
                "measuredReplicas": len(samples),
                "currentCPUUtilizationPercentage": used,
                "targetCPUUtilizationPercentage": target.cpu_percent,
                "lastScaleTime": before.get("lastScaleTime"),
            }
            if target.requests_per_second is not None:
                block["currentRequestsPerSecond"] = None if rate is None else round(rate, 1)
                block["targetRequestsPerSecond"] = target.requests_per_second
            if decided != current:
                wall = _now()
                block["lastScaleTime"] = wall.isoformat().replace("+00:00", "Z")
                if to_zero:
                    message = autoscale.idle_reason(current, target)
                elif (
                    rate is not None
                    and by_rate == decided
                    and proposal != autoscale.recommend(current, samples, target)
                ):
                    message = autoscale.rate_reason(current, decided, rate, target)
                else:
                    message = autoscale.reason(current, decided, used, target)
                log.info("%s: autoscaled: %s", _name(ref), message)
                self._scale_events.setdefault(ref, []).append(
                    event(wall, "SuccessfulRescale", message)
                )
            if block != before:
                self._scale_status[ref] = block
                self._dirty_apps.add(ref)
                self._dirty = True

    def _rebuild(
        self, ref: Ref, app: dict[str, Any], revision: str, history: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, str]] | None:
        """An old revision's document and environment, from the history in its status
        (after a restart of the controller, which held them in memory)."""
        entry = next((e for e in history if e.get("hash") == revision), None)
        if entry is None:
            return None
        doc = rollout.with_template(app, entry.get("template") or {})
        env_doc = self._envs.get((ref[0], ref[1], "")) or {}
        variables = (env_doc.get("spec") or {}).get("variables") or {}
        env = resolve_env(doc, self._configs, self._secrets, variables)
        return (doc, env) if isinstance(env, dict) else None

    # ---- what agents report -------------------------------------------------------------

    async def on_heartbeat(self, hb: NodeHeartbeat) -> None:
        """A node is alive: refresh ``Node.status``, and the replicas it lists."""
        await self.on_heartbeats([hb])

    def heard(self, node: str) -> None:
        """A heartbeat of ``node`` was just published (``MessageOffice.hear_heartbeats``):
        it is alive now, whatever the backlog of messages before its heartbeat's handling."""
        if node in self._nodes:
            self.tracker.heartbeat(node, self._clock())

    async def on_heartbeats(self, beats: list[NodeHeartbeat]) -> None:
        """Heartbeats of many nodes, delivered together: each node's newest counts.

        Liveness is noted on arrival, before the controller's lock (a backlog behind a
        round of scheduling must not read as silent nodes: that turned busy agents
        NotReady and moved their replicas in a loop). Then, under the lock, each node's
        status is refreshed (one that changes nothing but the time is written at most
        every ``HEARTBEAT_WRITE_EVERY`` seconds: liveness is judged on our own clock,
        ``NodeTracker``), one round of scheduling if a node changed, and the replicas
        they list are folded into their apps together."""
        newest: dict[str, NodeHeartbeat] = {}
        for hb in beats:
            held = newest.get(hb.node)
            if held is None or hb.time >= held.time:
                newest[hb.node] = hb
        now = self._clock()
        for name, hb in newest.items():
            seen = self._heartbeat_seen.get(name)
            if name in self._nodes and (seen is None or hb.time >= seen):
                self.tracker.heartbeat(name, now)
        async with self._lock:
            listed: list[tuple[str, ReplicaStatus]] = []
            for hb in newest.values():
                if await self._heartbeat(hb):
                    listed += [(hb.node, replica) for replica in hb.replicas]
            if self._dirty:
                # First the nodes' readiness, so the replicas they list are read as fresh news.
                await self._reconcile()
            await self._fold(listed, [])

    async def _heartbeat(self, hb: NodeHeartbeat) -> bool:
        """Take one node's heartbeat into its status; False when it says nothing new."""
        key = Key("Node", "", "", hb.node)
        doc = self._latest.get(key) or await self.store.find(key)
        if doc is None or deleting(doc):
            log.warning("node//%s: heartbeat from a node that is not registered", hb.node)
            return False
        status = doc.get("status") or {}
        seen = self._heartbeat_seen.get(hb.node)
        if not is_newer(status, hb) or (seen is not None and hb.time < seen):
            return False  # a late or redelivered heartbeat says nothing new
        self._heartbeat_seen[hb.node] = hb.time
        self.usage.record(hb)
        now = self._clock()
        self._gateway_activity(hb, now)
        self.tracker.heartbeat(hb.node, now)
        quiet = _only_time_moved(status, apply_heartbeat(status, hb))
        due = now - self._heartbeat_written.get(hb.node, -HEARTBEAT_WRITE_EVERY)
        if not quiet or due >= HEARTBEAT_WRITE_EVERY:
            written = await self._set_status(
                key, lambda d: apply_heartbeat(d.get("status") or {}, hb)
            )
            if written is not None:
                self._heartbeat_written[hb.node] = now
                self._remember("Node", written)
        return True

    def _gateway_activity(self, hb: NodeHeartbeat, now: float) -> None:
        """New connections counted by this node's gateways keep a scale-to-zero app awake;
        a request held at a gateway for an app at 0 replicas wakes it at once."""
        for team, report in hb.mesh.items():
            for key, count in report.connections.items():
                env, _, name = key.partition("/")
                ref = (team, env, name)
                seen = self._conns_seen.get((ref, hb.node))
                if seen != count:
                    self._conns_seen[(ref, hb.node)] = count
                    self._active_at[ref] = now
                    if seen is not None:  # a smaller count: the router started again
                        grown = count - seen if count >= seen else count
                        self._conn_delta[ref] = self._conn_delta.get(ref, 0) + grown
            for key in report.waiting:
                env, _, name = key.partition("/")
                ref = (team, env, name)
                self._active_at[ref] = now
                app = self._apps.get(ref)
                bounds = ((app or {}).get("spec") or {}).get("autoscale") or {}
                if app is None or bounds.get("minReplicas", 1) != 0:
                    continue
                status = (self._latest.get(Key("App", *ref)) or app).get("status") or {}
                if self._wanted_now(ref, app, status) != 0:
                    continue
                before = self._scale_status.get(ref) or dict(status.get("autoscale") or {})
                wall = _now()
                message = autoscale.wake_reason()
                log.info("%s: autoscaled: %s", _name(ref), message)
                self._scale_events.setdefault(ref, []).append(
                    event(wall, "SuccessfulRescale", message)
                )
                self._scale_status[ref] = {
                    **before,
                    "desiredReplicas": 1,
                    "lastScaleTime": wall.isoformat().replace("+00:00", "Z"),
                }
                self._scale_history.pop(ref, None)
                self._scaled_at[ref] = now  # the next evaluation a period from now
                self._dirty_apps.add(ref)
                self._dirty = True

    async def on_replica_status(self, report: ReplicaStatusReport) -> None:
        """One replica changed on a node: fold it into its app's status."""
        async with self._lock:
            await self._replica(report.node, report.replica)

    async def _replica(self, node: str, status: ReplicaStatus) -> None:
        parsed = parse_replica_id(status.id)
        if parsed is None:
            log.warning("node//%s: report about %r, which is not a replica id", node, status.id)
            return
        ref, index = parsed
        here = next((p for p in self._placements.get(ref, []) if p.index == index), None)
        if here is None or here.node != node:
            # An old home of a moved replica, or a replica scaled away: not the truth now.
            log.debug("%s: ignoring report of replica %d from node %s", _name(ref), index, node)
            return
        await self._write_app(ref, reports={index: Report(node, status)})
        if ref in self._rolling:
            # Readiness is what a rollout waits for: take its next step now.
            self._dirty_apps.add(ref)
            self._dirty = True
            await self._reconcile()

    async def on_replica_batch(
        self, reports: list[ReplicaStatusReport], events: list[AgentEvent]
    ) -> None:
        """Many replicas' reports and events at once (what the Message Office delivered
        together): each app's status written once for all of them, the apps in a few
        transactions. A replica reported twice keeps its latest report; events keep their
        order. Node events go one by one, as ``on_event``."""
        async with self._lock:
            await self._fold([(r.node, r.replica) for r in reports], events)

    async def _fold(
        self, reports: list[tuple[str, ReplicaStatus]], events: list[AgentEvent]
    ) -> None:
        folded: dict[Ref, tuple[dict[int, Report], list[dict[str, Any]]]] = {}
        for node, replica in reports:
            parsed = parse_replica_id(replica.id)
            if parsed is None:
                log.warning(
                    "node//%s: report about %r, which is not a replica id", node, replica.id
                )
                continue
            ref, index = parsed
            here = next((p for p in self._placements.get(ref, []) if p.index == index), None)
            if here is None or here.node != node:
                continue  # an old home of a moved replica, or one scaled away
            folded.setdefault(ref, ({}, []))[0][index] = Report(node, replica)
        for ev in events:
            parsed = parse_replica_id(ev.replica_id) if ev.replica_id else None
            if parsed is None or parsed[0] not in self._placements:
                await self._on_event(ev)  # a node's, or no status of ours to fold into
                continue
            ref, index = parsed
            entry = event(ev.time, ev.reason, ev.message, type=ev.type.value, replica=index)
            folded.setdefault(ref, ({}, []))[1].append(entry)
        await self._write_apps(
            [(ref, found or None, entries) for ref, (found, entries) in folded.items()]
        )
        if any(ref in self._rolling for ref in folded):
            # Readiness is what a rollout waits for: take its next step now.
            self._dirty_apps.update(ref for ref in folded if ref in self._rolling)
            self._dirty = True
            await self._reconcile()

    async def on_event(self, ev: AgentEvent) -> None:
        """An agent's event: into the app's ``status.events``, or the node's."""
        async with self._lock:
            await self._on_event(ev)

    async def _on_event(self, ev: AgentEvent) -> None:
        if ev.replica_id:
            parsed = parse_replica_id(ev.replica_id)
            if parsed is None or parsed[0] not in self._apps:
                return
            ref, index = parsed
            entry = event(ev.time, ev.reason, ev.message, type=ev.type.value, replica=index)

            def add(doc: dict[str, Any]) -> dict[str, Any]:
                status = copy.deepcopy(doc.get("status") or {})
                status["events"] = add_events(status.get("events") or [], [entry])
                return status

            await self._set_status(Key("App", *ref), add)
            return
        await self._set_status(
            Key("Node", "", "", ev.node), lambda d: add_node_event(d.get("status") or {}, ev)
        )


def _not_ready(silent: float) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(doc: dict[str, Any]) -> dict[str, Any]:
        return mark_not_ready(doc.get("status") or {}, silent, _now())

    return change


def _data(doc: Mapping[str, Any]) -> Any:
    return (doc.get("data"), doc.get("spec"))
