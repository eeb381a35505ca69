"""Where each app replica runs: placement of replicas on nodes, as a pure function.

The workloads controller turns Nodes and Apps into the plain data below and asks
:func:`schedule` for a placement of every replica. The rules, in order:

1. Scale down removes the highest indexes; a replica keeps its index for life. During a
   rollout the caller names the indexes to place (``AppRequest.indexes``, see ``rollout``).
2. A replica already placed stays where it is while its node still exists, is not lost
   (NotReady past the grace period), is schedulable (not drained, not being deleted,
   not tainted NoSchedule) and still matches the app's ``nodeSelector`` — so a change
   elsewhere never reshuffles running replicas.
3. Every other replica goes to a Ready, schedulable node that matches ``nodeSelector``,
   offers the runtime the app needs, has the requested CPU and memory free (capacity
   minus what is already placed there) and fewer replicas than its pod limit
   (``NodeInfo.max_pods``: 110 unless the node says, as Kubernetes' kubelet; a node's pod
   subnet holds 244 addresses, shared with its workspaces); among those, the node with
   the fewest replicas of this app, then the fewest replicas of any app, then the name.
4. A replica that fits nowhere stays Pending with a message saying why, in words a user
   can act on ("0/3 nodes match nodeSelector disktype=ssd").

No clock, no I/O: equal input gives equal output, which the unit tests rely on.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kled.errors import KledError
from kled.resources import clusterservices
from kled.resources.quantities import format_cpu, format_memory, parse_cpu, parse_memory

#: the reason of every replica the scheduler could not place
UNSCHEDULABLE = "Unschedulable"

#: replicas a node takes unless its ``spec.capacity.pods`` says otherwise (Kubernetes'
#: kubelet default; well inside the 244 addresses of a node's pod subnet)
DEFAULT_MAX_PODS = 110

#: runtimes and the node capabilities that can run them (any one is enough)
RUNTIME_CAPABILITIES: Mapping[str, frozenset[str]] = {
    "container": frozenset({"podman", "docker"}),
    "kubernetes": frozenset({"kubernetes"}),
}


@dataclass(frozen=True)
class NodeInfo:
    """What the scheduler needs to know of one node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    #: False when drained (``spec.unschedulable``), being deleted, or tainted NoSchedule
    schedulable: bool = True
    #: NotReady past the grace period, or gone: its replicas must move
    lost: bool = False
    #: None when unknown (no heartbeat has said): then it does not limit placement
    cpu_millicores: int | None = None
    memory_bytes: int | None = None
    #: empty when unknown: then any runtime is allowed
    capabilities: frozenset[str] = frozenset()
    #: a PreferNoSchedule taint: used only when nothing else fits
    avoid: bool = False
    #: how many replicas it takes at most (placed ones are kept even past it)
    max_pods: int = DEFAULT_MAX_PODS


@dataclass(frozen=True)
class AppRequest:
    """One app as the scheduler sees it; ``key`` is ``team/environment/name``."""

    key: str
    replicas: int
    node_selector: Mapping[str, str] = field(default_factory=dict)
    cpu_millicores: int = 0
    memory_bytes: int = 0
    runtime: str = "process"
    #: where its replicas are now: index → node name
    current: Mapping[int, str] = field(default_factory=dict)
    #: the indexes to place when they are not ``0..replicas-1`` (a rollout's surge)
    indexes: tuple[int, ...] | None = None
    #: ``<team>.<cluster>`` for the App of a Kled Cluster's Deployment: it may run on that
    #: cluster's external nodes, the only apps that may (``clusterservices.reserved_for``)
    cluster: str | None = None
    #: that cluster's ``spec.nodeSelector``: the team's other nodes its apps may use
    cluster_selector: Mapping[str, str] = field(default_factory=dict)

    def wanted(self) -> Sequence[int]:
        return range(self.replicas) if self.indexes is None else self.indexes


@dataclass(frozen=True)
class Placement:
    """Where one replica goes; ``node`` is None when it is Pending, and ``message`` says why."""

    index: int
    node: str | None
    reason: str | None = None
    message: str | None = None


Plan = dict[str, list[Placement]]


@dataclass
class _Room:
    """What is left on one node while placing."""

    info: NodeInfo
    cpu_used: int = 0
    memory_used: int = 0
    replicas: int = 0
    per_app: Counter[str] = field(default_factory=Counter)

    def take(self, app: AppRequest) -> None:
        self.cpu_used += app.cpu_millicores
        self.memory_used += app.memory_bytes
        self.replicas += 1
        self.per_app[app.key] += 1

    def cpu_free(self) -> int | None:
        cap = self.info.cpu_millicores
        return None if cap is None else cap - self.cpu_used

    def memory_free(self) -> int | None:
        cap = self.info.memory_bytes
        return None if cap is None else cap - self.memory_used

    def fits_cpu(self, app: AppRequest) -> bool:
        free = self.cpu_free()
        return free is None or app.cpu_millicores <= free

    def fits_memory(self, app: AppRequest) -> bool:
        free = self.memory_free()
        return free is None or app.memory_bytes <= free

    def fits_pods(self) -> bool:
        return self.replicas < self.info.max_pods


def selector_text(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def runs(node: NodeInfo, runtime: str) -> bool:
    needed = RUNTIME_CAPABILITIES.get(runtime)
    return needed is None or not node.capabilities or bool(needed & node.capabilities)


def admits(node: NodeInfo, app: AppRequest) -> bool:
    """A node reserved for a Kled Cluster (it joined with the cluster's token) runs that
    cluster's apps only; a cluster's apps run there or on the nodes its selector picks."""
    owner = node.labels.get(clusterservices.CLUSTER_LABEL)
    if owner is not None:
        return owner == app.cluster
    return app.cluster is None or matches(app.cluster_selector, node.labels)


def keeps(node: NodeInfo | None, app: AppRequest) -> bool:
    """Whether a replica of ``app`` already on ``node`` may stay there."""
    return (
        node is not None
        and not node.lost
        and node.schedulable
        and matches(app.node_selector, node.labels)
        and admits(node, app)
    )


def schedule(nodes: Iterable[NodeInfo], apps: Iterable[AppRequest]) -> Plan:
    """A placement for every replica of every app (see the module docstring for the rules)."""
    placer = _Placer({n.name: _Room(n) for n in sorted(nodes, key=lambda n: n.name)})
    ordered = sorted(apps, key=lambda a: a.key)
    plan: Plan = {}
    # Kept placements first, for every app, so that what is already running is counted
    # before anything new is placed anywhere.
    for app in ordered:
        kept: list[Placement] = []
        for index in app.wanted():
            node = app.current.get(index)
            room = placer.rooms.get(node) if node is not None else None
            if room is not None and keeps(room.info, app):
                placer.take(room, app)
                kept.append(Placement(index, room.info.name))
        plan[app.key] = kept
    for app in ordered:
        placed = {p.index for p in plan[app.key]}
        for index in app.wanted():
            if index not in placed:
                plan[app.key].append(placer.place(app, index))
        plan[app.key].sort(key=lambda p: p.index)
    return plan


class _Ranked:
    """The nodes one kind of app may use (same selectors and runtime), least loaded first
    by ``(avoid, replicas, name)``: a heap whose stale entries are mended as they surface."""

    def __init__(self, rooms: Iterable[_Room]) -> None:
        self.rooms = {room.info.name: room for room in rooms}
        self.heap = [(r.info.avoid, r.replicas, r.info.name) for r in self.rooms.values()]
        heapq.heapify(self.heap)

    def first(self, app: AppRequest) -> _Room | None:
        """The least loaded node that fits one more replica of ``app`` and holds none."""
        aside: list[tuple[bool, int, str]] = []
        found = None
        while self.heap:
            avoid, count, name = self.heap[0]
            room = self.rooms[name]
            if count != room.replicas:  # it took replicas since: ranked again
                heapq.heapreplace(self.heap, (avoid, room.replicas, name))
            elif not room.fits_pods():  # full: replicas only grow while placing
                heapq.heappop(self.heap)
            elif room.per_app[app.key] or not (room.fits_cpu(app) and room.fits_memory(app)):
                aside.append(heapq.heappop(self.heap))  # not for this app, maybe the next
            else:
                found = room
                break
        for entry in aside:
            heapq.heappush(self.heap, entry)
        return found


class _Placer:
    """The rooms while placing, with what makes each placement cheap: the nodes each kind
    of app may use, sifted once (10,000 new replicas on 500 nodes took seconds when every
    replica looked at every node), and where each app already has replicas."""

    def __init__(self, rooms: dict[str, _Room]) -> None:
        self.rooms = rooms
        self._kinds: dict[tuple[Any, ...], _Ranked] = {}
        self._holding: dict[str, dict[str, _Room]] = {}
        #: replicas taken so far, and the Pending messages good while that stays the same
        self._taken = 0
        self._pending: dict[tuple[Any, ...], tuple[int, str]] = {}

    def take(self, room: _Room, app: AppRequest) -> None:
        room.take(app)
        self._holding.setdefault(app.key, {})[room.info.name] = room
        self._taken += 1

    def _ranked(self, app: AppRequest) -> tuple[tuple[Any, ...], _Ranked]:
        kind = (
            tuple(sorted(app.node_selector.items())),
            app.cluster,
            tuple(sorted(app.cluster_selector.items())),
            app.runtime,
        )
        ranked = self._kinds.get(kind)
        if ranked is None:
            ranked = self._kinds[kind] = _Ranked(
                room
                for room in self.rooms.values()
                if room.info.ready
                and room.info.schedulable
                and not room.info.lost
                and matches(app.node_selector, room.info.labels)
                and admits(room.info, app)
                and runs(room.info, app.runtime)
            )
        return kind, ranked

    def place(self, app: AppRequest, index: int) -> Placement:
        kind, ranked = self._ranked(app)
        fitting = [
            room
            for name, room in self._holding.get(app.key, {}).items()
            if name in ranked.rooms
            and room.fits_pods()
            and room.fits_cpu(app)
            and room.fits_memory(app)
        ]
        first = ranked.first(app)
        if first is not None:
            fitting.append(first)
        if not fitting:
            return Placement(index, None, UNSCHEDULABLE, self._why(app, kind))
        best = min(
            fitting,
            key=lambda r: (r.info.avoid, r.per_app[app.key], r.replicas, r.info.name),
        )
        self.take(best, app)
        return Placement(index, best.info.name)

    def _why(self, app: AppRequest, kind: tuple[Any, ...]) -> str:
        key = (*kind, app.cpu_millicores, app.memory_bytes)
        said = self._pending.get(key)
        if said is not None and said[0] == self._taken:
            return said[1]  # nothing was placed since: the same words
        text = why_pending(app, [r.info for r in self.rooms.values()], self.rooms)
        self._pending[key] = (self._taken, text)
        return text


def why_pending(
    app: AppRequest, nodes: Sequence[NodeInfo], rooms: Mapping[str, _Room] | None = None
) -> str:
    """Why no node can take one more replica of ``app``, in words a user can act on."""
    total = len(nodes)
    if total == 0:
        return "no nodes: start an agent with `kled agent --server URL --token T`"
    usable = [n for n in nodes if n.ready and not n.lost and n.schedulable]
    if not usable:
        not_ready = sum(1 for n in nodes if not n.ready or n.lost)
        cordoned = total - not_ready
        detail = [f"{not_ready} NotReady"] if not_ready else []
        if cordoned:
            detail.append(f"{cordoned} unschedulable")
        return f"no ready nodes ({', '.join(detail)} of {total})"
    selected = [n for n in usable if matches(app.node_selector, n.labels)]
    if selected and not any(admits(n, app) for n in selected):
        return f"0/{total} nodes can take it: {_refused_text(app, selected)}"
    selected = [n for n in selected if admits(n, app)]
    if app.node_selector and not selected:
        matching = sum(1 for n in nodes if matches(app.node_selector, n.labels))
        text = f"0/{total} nodes match nodeSelector {selector_text(app.node_selector)}"
        if matching:
            text += f" and are ready and schedulable ({matching} match but are not)"
        return text
    capable = [n for n in selected if runs(n, app.runtime)]
    if not capable:
        needed = " or ".join(sorted(RUNTIME_CAPABILITIES.get(app.runtime, frozenset())))
        return (
            f"0/{total} nodes can run the {app.runtime} runtime "
            f"(none of the {len(selected)} candidates has {needed})"
        )
    rooms = rooms or {n.name: _Room(n) for n in nodes}
    short_memory = sum(1 for n in capable if not rooms[n.name].fits_memory(app))
    short_cpu = sum(1 for n in capable if not rooms[n.name].fits_cpu(app))
    full = [n for n in capable if not rooms[n.name].fits_pods()]
    parts: list[str] = []
    if full:
        limits = sorted({n.max_pods for n in full})
        at_most = "/".join(str(limit) for limit in limits)
        parts.append(f"too many pods on {_nodes(len(full))} (at most {at_most} each)")
    if short_memory:
        parts.append(
            f"insufficient memory on {_nodes(short_memory)} "
            f"(needs {format_memory(app.memory_bytes)})"
        )
    if short_cpu:
        parts.append(
            f"insufficient cpu on {_nodes(short_cpu)} (needs {format_cpu(app.cpu_millicores)})"
        )
    left_out = total - len(capable)
    if parts and left_out:
        parts.append(f"{_nodes(left_out)} not eligible (NotReady, unschedulable or not matching)")
    return "; ".join(parts) or f"0/{total} nodes can take it"


def _refused_text(app: AppRequest, nodes: Sequence[NodeInfo]) -> str:
    """``gpu-box runs only the pods of Kled Cluster acme.dev`` (its external nodes), or
    ``n1 not picked by Kled Cluster acme.qa's nodeSelector pool=tenants``."""
    owners: dict[str, list[str]] = {}
    outside: list[str] = []
    for n in nodes:
        owner = n.labels.get(clusterservices.CLUSTER_LABEL)
        if owner is None:
            outside.append(n.name)
        else:
            owners.setdefault(owner, []).append(n.name)
    parts = [
        f"{', '.join(sorted(names))} {'runs' if len(names) == 1 else 'run'} only the pods "
        f"of Kled Cluster {owner}"
        for owner, names in sorted(owners.items())
    ]
    if outside:
        parts.append(
            f"{', '.join(sorted(outside))} not picked by Kled Cluster {app.cluster}'s "
            f"nodeSelector {selector_text(app.cluster_selector)}"
        )
    return "; ".join(parts)


def _nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


def placements_changed(before: Sequence[Placement], after: Sequence[Placement]) -> bool:
    """Whether a replica moved, appeared, went or changed its Pending message."""
    return list(before) != list(after)


def app_request(
    app: Mapping[str, Any],
    current: Sequence[Placement],
    indexes: Sequence[int] | None = None,
) -> AppRequest:
    """The scheduler's view of an App document and of where its replicas are now;
    ``indexes`` are the replicas to place (all of ``0..replicas-1`` when None)."""
    meta = app.get("metadata") or {}
    spec = app.get("spec") or {}
    cluster = (meta.get("labels") or {}).get(clusterservices.CLUSTER_LABEL)
    wanted = spec.get("resources") or {}
    try:
        cpu = parse_cpu(wanted["cpu"]) if wanted.get("cpu") else 0
        memory = parse_memory(wanted["memory"]) if wanted.get("memory") else 0
    except KledError:
        cpu, memory = 0, 0  # admission refuses these; an old document must not stop the rest
    return AppRequest(
        key=f"{meta.get('team')}/{meta.get('environment')}/{meta.get('name')}",
        replicas=int(spec.get("replicas", 1)),
        node_selector=dict(spec.get("nodeSelector") or {}),
        cpu_millicores=cpu,
        memory_bytes=memory,
        runtime=str(spec.get("runtime") or "process"),
        current={p.index: p.node for p in current if p.node is not None},
        indexes=None if indexes is None else tuple(sorted(indexes)),
        cluster=clusterservices.reserved_for(str(meta.get("team")), str(cluster))
        if cluster
        else None,
    )
