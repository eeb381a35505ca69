"""The workspaces controller: each Workspace placed on a node, sent there, its status kept.

A workspace is scheduled like a one-replica app, with the same view of nodes
(``nodes.node_info``): a Ready, schedulable node that matches ``spec.node`` and
``spec.nodeSelector`` and can run the provider (podman or docker for ``container``); the
one with the fewest workspaces wins, then the first by name. A placement is kept in
``Workspace.status.node`` and never moved while that node exists: a workspace holds files
and volumes on its node, so moving it would lose them.

The workspaces of a node travel in its ``HostDesiredState.workspaces``. The workload
controller owns that state's replicas; :class:`WorkspaceSink` sits between it and the
rest of the chain, remembers each node's last state and adds the node's workspaces, so
either side's change sends the combined value and neither overwrites the other.

Agents report a workspace through the replica status subject under its id
(``workspacestate.workspace_id``); :meth:`WorkspaceController.on_status` folds that into
``Workspace.status``. ``plan_placements`` and ``phase_of`` are pure and tested alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from kled.control import wsfit
from kled.control.desired import restart_generation
from kled.control.nodes import deleting, node_info
from kled.control.scheduling import NodeInfo, matches
from kled.control.sinks import put_all
from kled.errors import Conflict, KledError, NotFound, Unavailable
from kled.resources import clusterservices
from kled.resources.fields import duration_seconds
from kled.resources.hoststate import HostDesiredState, ReplicaState, ReplicaStatus
from kled.resources.registry import RESET_AT, RESTARTED_AT
from kled.resources.sshkeys import workspace_keys
from kled.resources.workspacestate import (
    IDLE_PREFIX,
    WorkspaceOnHost,
    WorkspacePhase,
    parse_workspace_id,
)
from kled.store.objects import Key, Store

log = logging.getLogger(__name__)

#: the node capabilities a provider needs (any one of them): a container engine, or (for a
#: sandboxed process tree) an agent that may make namespaces, i.e. runs as root
PROVIDER_CAPABILITIES = {
    "container": frozenset({"podman", "docker"}),
    "process": frozenset({"netns"}),
}
#: what a provider's node lacks, as the Pending reason says it
PROVIDER_NEEDS = {
    "container": "podman or docker",
    "process": "an agent running as root (namespaces)",
}
#: set by ``kled ws up --reset`` (an ISO timestamp): the workspace starts from fresh files
#: what the agent says while building, in a Starting status's reason
BUILDING_REASON = "Building"

Ref = tuple[str, str]  # (team, name)


class StateSink(Protocol):
    def put(self, node: str, state: HostDesiredState) -> Awaitable[None] | None: ...


def ref_of(doc: Mapping[str, Any]) -> Ref:
    meta = doc["metadata"]
    return str(meta["team"]), str(meta["name"])


def _fits(node: NodeInfo, spec: Mapping[str, Any]) -> bool:
    if node.labels.get(clusterservices.CLUSTER_LABEL):
        return False  # a Kled Cluster's external node runs that cluster's pods only
    wanted = spec.get("node")
    if wanted and node.name != wanted:
        return False
    if not matches(spec.get("nodeSelector") or {}, node.labels):
        return False
    needed = PROVIDER_CAPABILITIES.get(str(spec.get("provider") or "container"))
    return needed is not None and bool(needed & node.capabilities)


def plan_placements(
    workspaces: Iterable[Mapping[str, Any]], nodes: Iterable[NodeInfo]
) -> tuple[dict[Ref, str], dict[Ref, str]]:
    """(workspace → node, workspace → why it has none). A placed workspace stays on its
    node while the node exists; the others go to the fitting node with the fewest."""
    infos = {n.name: n for n in nodes}
    placed: dict[Ref, str] = {}
    pending: dict[Ref, str] = {}
    load: dict[str, int] = dict.fromkeys(infos, 0)
    docs = sorted(workspaces, key=ref_of)
    for doc in docs:
        current = (doc.get("status") or {}).get("node")
        if current in infos:
            placed[ref_of(doc)] = str(current)
            load[str(current)] += 1
    for doc in docs:
        ref = ref_of(doc)
        if ref in placed:
            continue
        spec = doc.get("spec") or {}
        eligible = [
            n for n in infos.values() if n.ready and n.schedulable and not n.lost and _fits(n, spec)
        ]
        fitting = [n for n in eligible if wsfit.fits(n, spec)]  # hostRequirements
        if not fitting:
            pending[ref] = wsfit.shortfall(spec, eligible) or _why_none(spec, infos.values())
            continue
        chosen = min(fitting, key=lambda n: (load[n.name], n.name))
        placed[ref] = chosen.name
        load[chosen.name] += 1
    return placed, pending


def _why_none(spec: Mapping[str, Any], nodes: Iterable[NodeInfo]) -> str:
    every = list(nodes)
    if not every:
        return "no node has joined: run `kled agent` on a host"
    if spec.get("node") and all(n.name != spec["node"] for n in every):
        return f"node {spec['node']} does not exist"
    provider = str(spec.get("provider") or "container")
    if provider == "kubernetes":
        return "the kubernetes provider is designed (docs/workspaces.md) but not available yet"
    if provider not in PROVIDER_CAPABILITIES:
        return f"the {provider} provider is not run by Kled agents yet; use container"
    why = (
        f"no Ready, schedulable node matches (provider {provider} needs {PROVIDER_NEEDS[provider]}"
        + (f", nodeSelector {spec.get('nodeSelector')}" if spec.get("nodeSelector") else "")
        + ")"
    )
    if provider == "container" and any(
        n.ready and n.schedulable and not n.lost and _fits(n, {**spec, "provider": "process"})
        for n in every
    ):
        why += "; a node without one can run it as processes: kled ws up --provider process"
    return why


def on_host(doc: Mapping[str, Any], keys: list[str] | None = None) -> WorkspaceOnHost:
    """The agent's view of a Workspace document (``keys``: its allowed users')."""
    team, name = ref_of(doc)
    spec = doc.get("spec") or {}
    source = spec.get("source") or {}
    path = source.get("path")
    return WorkspaceOnHost(
        team=team,
        name=name,
        uid=str(doc["metadata"].get("uid") or ""),
        provider=str(spec.get("provider") or "container"),
        running=bool(spec.get("running", True)),
        git=source.get("git"),
        ref=source.get("ref"),
        upload=source.get("upload"),
        folder=str(path).rstrip("/").rsplit("/", 1)[-1] if path else None,
        devcontainer=spec.get("devcontainer"),
        env={str(k): str(v) for k, v in (spec.get("env") or {}).items()},
        recreated=restart_generation(doc),
        reset=reset_generation(doc),
        local_env={str(k): str(v) for k, v in (spec.get("localEnv") or {}).items()},
        project=spec.get("project"),
        idle_timeout=duration_seconds(spec["idleTimeout"]) if spec.get("idleTimeout") else None,
        authorized_keys=keys or [],
    )


def reset_generation(doc: Mapping[str, Any]) -> int:
    """The ``kled.io/resetAt`` annotation (``kled ws up --reset``) as a number, as
    ``restart_generation`` reads ``kled.io/restartedAt``."""
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(RESET_AT)
    return restart_generation({"metadata": {"annotations": {RESTARTED_AT: value}}})


def phase_of(status: ReplicaStatus) -> WorkspacePhase:
    """An agent's report as the workspace's phase."""
    if status.state == ReplicaState.STARTING:
        if status.reason == BUILDING_REASON:
            return WorkspacePhase.BUILDING
        return WorkspacePhase.STARTING
    return {
        ReplicaState.PENDING: WorkspacePhase.PENDING,
        ReplicaState.RUNNING: WorkspacePhase.RUNNING,
        ReplicaState.STOPPED: WorkspacePhase.STOPPED,
        ReplicaState.SUCCEEDED: WorkspacePhase.STOPPED,
        ReplicaState.FAILED: WorkspacePhase.FAILED,
    }[status.state]


class WorkspaceSink:
    """A desired-state sink that adds each node's workspaces to what passes through."""

    def __init__(self, inner: StateSink) -> None:
        self.inner = inner
        self._states: dict[str, HostDesiredState] = {}
        #: None until the controller has read the store: agents then leave theirs alone
        self._workspaces: dict[str, list[WorkspaceOnHost]] | None = None
        self._lock = asyncio.Lock()

    async def put(self, node: str, state: HostDesiredState) -> None:
        await self.put_many({node: state})

    async def put_many(self, states: Mapping[str, HostDesiredState]) -> None:
        async with self._lock:
            self._states.update(states)
            await self._forward(list(states))

    async def set_workspaces(self, by_node: Mapping[str, list[WorkspaceOnHost]]) -> None:
        async with self._lock:
            before = self._workspaces
            self._workspaces = {n: list(ws) for n, ws in by_node.items()}
            changed = [
                node
                for node in sorted(self._states)
                if (None if before is None else before.get(node, []))
                != self._workspaces.get(node, [])
            ]
            await self._forward(changed)

    async def _forward(self, nodes: list[str]) -> None:
        states: dict[str, HostDesiredState] = {}
        for node in nodes:
            state = self._states[node]
            if self._workspaces is not None:
                state = state.model_copy(update={"workspaces": self._workspaces.get(node, [])})
            states[node] = state
        await put_all(self.inner, states)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class WorkspaceController:
    """Places workspaces, sends them to their nodes, writes what agents report."""

    def __init__(self, store: Store, sink: WorkspaceSink, *, tick: float = 1.0) -> None:
        self.store = store
        self.sink = sink
        self._tick = tick
        self._task: asyncio.Task[None] | None = None
        self._seen_revision = -1

    async def start(self) -> None:
        await self.reconcile()
        self._task = asyncio.create_task(self._run(), name="workspaces")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.store.wait_for_change(self._tick)
                await self.reconcile()
            except Unavailable as e:
                log.warning("workspaces: store unavailable (%s); retrying", e)
            except Exception:  # one bad round must not end workspaces for everyone
                log.exception("workspaces: reconcile failed; retrying")

    async def reconcile(self) -> None:
        revision = await self.store.revision()
        if revision == self._seen_revision:
            return
        workspaces = [d for d in (await self.store.list("Workspace")).items if not deleting(d)]
        nodes = [node_info(d) for d in (await self.store.list("Node")).items]
        users: dict[str, list[dict[str, Any]]] = {}
        for user in (await self.store.list("User")).items:
            users.setdefault(str(user["metadata"].get("team")), []).append(user)
        placed, pending = plan_placements(workspaces, nodes)
        by_node: dict[str, list[WorkspaceOnHost]] = {n.name: [] for n in nodes}
        for doc in workspaces:
            ref = ref_of(doc)
            status = doc.get("status") or {}
            if ref in placed:
                keys = workspace_keys(doc, users.get(ref[0], []))
                by_node.setdefault(placed[ref], []).append(on_host(doc, keys))
                if status.get("node") != placed[ref]:
                    await self._write(ref, node=placed[ref], phase=WorkspacePhase.PENDING)
            elif status.get("reason") != pending[ref] or status.get("phase") != "Pending":
                await self._write(ref, phase=WorkspacePhase.PENDING, reason=pending[ref])
        for items in by_node.values():
            items.sort(key=lambda w: w.id)
        await self.sink.set_workspaces(by_node)
        # Our own status writes move the revision: the next round reads them back once.
        self._seen_revision = revision

    async def on_status(self, node: str, status: ReplicaStatus) -> None:
        """An agent's report about one of its workspaces."""
        parsed = parse_workspace_id(status.id)
        if parsed is None:
            return
        doc = await self.store.find(Key("Workspace", parsed[0], "", parsed[1]))
        if doc is None or (doc.get("status") or {}).get("node") != node:
            return  # gone, or not this node's any more
        reason = status.message if status.state == ReplicaState.FAILED else None
        if status.state == ReplicaState.STOPPED and (status.reason or "").startswith(IDLE_PREFIX):
            reason = status.reason  # stopped by the agent for idleTimeout: keep it off
            await self._turn_off(parsed)
        await self._write(parsed, node=node, phase=phase_of(status), reason=reason)

    async def _turn_off(self, ref: Ref) -> None:
        """``spec.running: false`` (the agent stopped it as idle): ``kled ws start`` starts
        it again as after ``kled ws stop``."""
        key = Key("Workspace", ref[0], "", ref[1])
        for _ in range(8):
            doc = await self.store.find(key)
            if doc is None or deleting(doc) or not (doc.get("spec") or {}).get("running", True):
                return
            doc = {**doc, "spec": {**doc["spec"], "running": False}}
            try:
                await self.store.update(doc, expected_version=doc["metadata"]["resourceVersion"])
                log.info("workspace/%s/%s: stopped as idle", ref[0], ref[1])
                return
            except NotFound:
                return
            except Conflict:
                continue

    async def _write(
        self,
        ref: Ref,
        *,
        phase: WorkspacePhase,
        node: str | None = None,
        reason: str | None = None,
    ) -> None:
        key = Key("Workspace", ref[0], "", ref[1])
        for _ in range(8):
            doc = await self.store.find(key)
            if doc is None or deleting(doc):
                return
            old = doc.get("status") or {}
            new = dict(old)
            if node is not None:
                new["node"] = node
            new["phase"] = phase.value
            if reason:
                new["reason"] = reason
            else:
                new.pop("reason", None)
            if old.get("phase") != phase.value:
                new["phaseChangedAt"] = _now()
            if new == old:
                return
            try:
                await self.store.update_status(
                    key, new, expected_version=doc["metadata"]["resourceVersion"]
                )
                log.info("workspace/%s/%s: %s %s", ref[0], ref[1], phase.value, reason or "")
                return
            except NotFound:
                return
            except Conflict:
                continue
            except KledError as e:
                log.warning("workspace/%s/%s: status not written: %s", ref[0], ref[1], e)
                return


async def write_addresses(store: Store, team: str, ips: Mapping[str, str | None]) -> None:
    """Keep ``Workspace.status.ip`` (its pod IP on the team mesh) as the host networks give
    it; None removes it (the workspace has no pod now)."""
    for name, ip in sorted(ips.items()):
        key = Key("Workspace", team, "", name)
        for _ in range(8):
            doc = await store.find(key)
            if doc is None or deleting(doc):
                break
            old = doc.get("status") or {}
            new = {k: v for k, v in old.items() if k != "ip"}
            if ip:
                new["ip"] = ip
            if new == old:
                break
            try:
                await store.update_status(
                    key, new, expected_version=doc["metadata"]["resourceVersion"]
                )
                break
            except NotFound:
                break
            except Conflict:
                continue
            except KledError as e:
                log.warning("workspace/%s/%s: address not written: %s", team, name, e)
                break
