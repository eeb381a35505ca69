"""The host agent: makes this host run what the control plane wants, and says how it went.

It watches the node's desired-state key on the Message Office, asks the runtimes what
they run, plans the difference (``kled.agent.reconcile.plan``) and carries it out through
the ``Reconciler``. Everything it observes goes back over the Message Office: a replica's
status when it changes, a heartbeat every few seconds (capacity, labels, capabilities and
every replica's status), events a user would want in ``kled describe``, and log lines.
Outgoing messages wait in a queue while NATS is away and are sent with a message id
fixed at enqueue time, so a retried publish is stored once.

The agent never stops replicas when it exits; a restarted agent adopts them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.metadata
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from kled.agent.downward import with_fields
from kled.agent.exec import ExecServer, Target, find_running
from kled.agent.mesh import MeshKeeper
from kled.agent.net import gateway
from kled.agent.net.host import HostNetworkLayer, LinuxHostNetwork
from kled.agent.probing import ExecPlanner, Probers, run_handler
from kled.agent.reconcile import Action, ActionKind, Observed, Reconciler, plan
from kled.agent.runtime.base import Runtime
from kled.agent.runtime.container import ContainerRuntime, container_engine
from kled.agent.runtime.process import ProcessRuntime
from kled.agent.runtime.records import private_dir
from kled.agent.usage import Running, UsageMeter
from kled.agent.workspaces import PodPlace, SourceFetcher, WorkspaceRunner
from kled.aio import wait_event
from kled.bus.office import MessageOffice
from kled.errors import Forbidden, KledError, PermanentError, TemporaryError, Unavailable
from kled.resources.hoststate import (
    AgentEvent,
    Capacity,
    EventType,
    HostDesiredState,
    LogLine,
    NodeHeartbeat,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    ReplicaStatusReport,
    RuntimeKind,
)
from kled.resources.workspacestate import WS_TOKEN

log = logging.getLogger(__name__)

_LOG_BACKLOG = 20_000
#: how long a replica on a node with the mesh waits for the control plane to give it a pod
POD_WAIT_SECONDS = 20


def agent_version() -> str:
    try:
        return importlib.metadata.version("kled")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def host_capacity() -> Capacity:
    return Capacity(
        cpu_millicores=(psutil.cpu_count() or 1) * 1000,
        memory_bytes=psutil.virtual_memory().total,
    )


def detect_capabilities() -> list[str]:
    """What this host can offer: netns, wireguard, podman, docker."""
    caps: list[str] = []
    if os.geteuid() == 0 and os.path.exists("/proc/self/ns/net"):
        caps.append("netns")
    if os.path.isdir("/sys/module/wireguard") or shutil.which("wireguard-go"):
        caps.append("wireguard")
    for engine in ("podman", "docker"):
        if shutil.which(engine):
            caps.append(engine)
    return caps


def default_runtimes(data_dir: Path) -> list[Runtime]:
    """The process runtime, and the container runtime where podman or docker is installed."""
    runtimes: list[Runtime] = [ProcessRuntime(data_dir / "replicas")]
    if container_engine() is not None:
        runtimes.append(ContainerRuntime(data_dir / "containers"))
    return runtimes


def default_network(
    data_dir: str | Path, node: str, host_id: str | None = None
) -> HostNetworkLayer | None:
    """The host's network layer for the agent of ``node`` (its state under ``data_dir``);
    None where this host cannot have one (not root, no WireGuard or nft)."""
    caps = detect_capabilities()
    if "netns" not in caps or "wireguard" not in caps or shutil.which("nft") is None:
        return None
    chosen = gateway.check_host_id(host_id) if host_id else gateway.default_host_id(node)
    return LinuxHostNetwork(None, host_id=chosen, state_dir=Path(data_dir) / "net")


@dataclass(frozen=True)
class _Out:
    kind: str  # status | event
    payload: ReplicaStatusReport | AgentEvent
    msg_id: str


class Agent:
    """One host's agent; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        data_dir: str | Path,
        office: MessageOffice,
        node_name: str,
        runtimes: Sequence[Runtime] | None = None,
        *,
        labels: dict[str, str] | None = None,
        heartbeat_interval: float = 2.0,
        workers: int = 8,
        network: HostNetworkLayer | None = None,
        network_recheck: float = 5.0,
        drain_timeout: float = 10.0,
        drain_settle: float = 1.0,
        usage_interval: float = 10.0,
        sources: SourceFetcher | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        private_dir(self.data_dir)  # its keys, tokens and records are the host's business only
        self.office = office
        self.node = node_name
        self.labels = dict(labels or {})
        self.heartbeat_interval = heartbeat_interval
        if runtimes is None:
            runtimes = default_runtimes(self.data_dir)
        self.runtimes: dict[RuntimeKind, Runtime] = {rt.kind: rt for rt in runtimes}
        for rt in self.runtimes.values():
            rt.on_status = self._status_changed
            rt.on_log = self._log_line
        self.capabilities = detect_capabilities()
        self.capacity = host_capacity()
        self.reconciler = Reconciler(self._execute, workers=workers, on_permanent=self._refused)
        self._desired: HostDesiredState | None = None
        #: replicas no runtime could take (e.g. its runtime is missing here), shown as Failed
        self._refused_replicas: dict[str, Observed] = {}
        self._out: asyncio.Queue[_Out] = asyncio.Queue()
        self._logs: collections.deque[LogLine] = collections.deque(maxlen=_LOG_BACKLOG)
        self._logs_ready = asyncio.Event()
        self._dropped_logs = 0
        self._reconcile_lock = asyncio.Lock()
        #: replicas told (once) to be Pending until their pod network is built
        self._network_waits: set[str] = set()
        #: replica id → when it began waiting for the control plane to give it a pod
        self._pod_waits: dict[str, float] = {}
        self.probers = Probers(self._exec_planner, self._ready_changed, self._probe_restart)
        #: replica id → why the agent itself last restarted it (a failed probe)
        self._restart_reasons: dict[str, str] = {}
        self._probe_kick = asyncio.Event()
        #: how long a stopping replica waits to leave this host's gateway, and then for the
        #: other gateways of its team to apply the same change
        self.drain_timeout = drain_timeout
        self.drain_settle = drain_settle
        #: replicas' and the host's CPU, memory and network, sent with a heartbeat this often
        self.usage = UsageMeter(usage_interval)
        self._background: set[asyncio.Task[None]] = set()
        #: the host's workspaces (``agent/workspaces.py``): in a container engine where one
        #: exists, as sandboxed processes (``agent/wsprocess.py``) where the agent is root
        self.workspaces: WorkspaceRunner | None = None
        if container_engine() is not None or "netns" in self.capabilities:
            self.workspaces = WorkspaceRunner(
                self.data_dir, fetcher=sources, on_status=self._workspace_status,
                on_log=self._log_line, pods=self._workspace_pod,
            )  # fmt: skip
        #: the host's team gateways and pods; None on a host without the network layer
        self.mesh: MeshKeeper | None = None
        if network is not None:
            self.mesh = MeshKeeper(
                network, self.data_dir / "wireguard", node=node_name,
                recheck_interval=network_recheck,
            )  # fmt: skip
            self.mesh.follow_peers()

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        for rt in self.runtimes.values():
            adopted = await rt.adopt()
            if adopted:
                log.info("node/%s adopted %d %s replicas", self.node, len(adopted), rt.kind)
        tasks = [
            asyncio.create_task(self._watch(), name="watch"),
            asyncio.create_task(self._heartbeats(), name="heartbeats"),
            asyncio.create_task(self._publish_loop(), name="publish"),
            asyncio.create_task(self._log_loop(), name="logs"),
            asyncio.create_task(self._probe_loop(), name="probes"),
            asyncio.create_task(self._exec_streams(), name="exec"),
        ]
        if self.workspaces is not None:
            tasks.append(asyncio.create_task(self.workspaces.run(), name="workspaces"))
        if self.mesh is not None:
            tasks.append(asyncio.create_task(self._watch_peers(), name="peers"))
            tasks.append(asyncio.create_task(self.mesh.run(), name="network"))
        log.info("node/%s agent running capabilities=%s", self.node, self.capabilities)
        try:
            await stop.wait()
        finally:
            await self.reconciler.close()
            self.probers.close()
            if self.workspaces is not None:
                await self.workspaces.close()
            tasks += list(self._background)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.mesh is not None:
                await self.mesh.close()
            for rt in self.runtimes.values():
                await rt.detach()
            log.info("node/%s agent stopped; replicas left running", self.node)

    def _workspace_pod(self, team: str, workspace_id: str) -> PodPlace | None:
        """The workspace's pod on the team mesh, when the desired network gives it one."""
        found = None if self.mesh is None else self.mesh.pod_of(team, workspace_id)
        return None if found is None else PodPlace(*found)

    async def _exec_target(self, replica_id: str) -> Target | None:
        """A replica's runtime, or this host's workspace of that id (``kled ws exec``)."""
        if self.workspaces is not None and WS_TOKEN in replica_id.split("."):
            return await self.workspaces.exec_target(replica_id)
        return await find_running(self.runtimes, replica_id)

    async def _exec_streams(self) -> None:
        """Commands run inside this host's replicas for ``kled exec`` and ``kled dev``."""
        server = ExecServer(self.office, self.node, self._exec_target)
        await server.run()

    # -- desired state -----------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            try:
                async for state in self.office.watch_desired(
                    self.node, heartbeat=self.heartbeat_interval
                ):
                    log.info(
                        "node/%s desired revision=%s replicas=%d",
                        self.node,
                        state.revision,
                        len(state.replicas),
                    )
                    if self.mesh is not None and self._desired is not None:
                        # Replicas leaving keep their pods until they have stopped.
                        self.mesh.hold(set(self._desired.by_id()) - set(state.by_id()))
                    self._desired = state
                    if self.mesh is not None:
                        self.mesh.want(state.network)
                    if self.workspaces is not None and state.workspaces is not None:
                        self.workspaces.want(state.workspaces)
                    await self.reconcile()
            except Forbidden as err:
                log.error("node/%s cannot read its desired state: %s", self.node, err)
                await asyncio.sleep(10)

    async def _watch_peers(self) -> None:
        """Feed the host's WireGuard peers, one Message Office key each, to the network."""
        assert self.mesh is not None
        while True:
            try:
                async for change in self.office.watch_peers(
                    self.node, heartbeat=self.heartbeat_interval
                ):
                    if change is None:
                        self.mesh.peers_known()
                    else:
                        self.mesh.peer_changed(change.team, change.name, change.peer)
            except Forbidden as err:
                log.error("node/%s cannot read its peers: %s", self.node, err)
                await asyncio.sleep(10)

    async def reconcile(self) -> None:
        """Plan against what the runtimes report now, and queue the actions."""
        if self._desired is None:
            return  # never act on "nothing desired" before the first value is known
        async with self._reconcile_lock:
            observed = await self.observe()
            if self.mesh is not None:
                self.mesh.release(self.mesh.held() - set(observed))
            desired = self._placed(self._desired)
            planned = plan(desired, observed)
            planned += self._outside_their_pods(desired, observed, {a.replica_id for a in planned})
            actions = [a for a in planned if not self.reconciler.busy(a.replica_id)]
            self.reconciler.submit(actions)

    def _placed(self, desired: HostDesiredState) -> HostDesiredState:
        """The desired replicas with their pod namespaces and the variables only this node
        knows (``downward``), as the runtimes must start them."""
        mesh = self.mesh
        placed = [mesh.place(r) if mesh is not None else r for r in desired.replicas]
        return desired.model_copy(update={"replicas": [with_fields(r, self.node) for r in placed]})

    def _outside_their_pods(
        self, desired: HostDesiredState, observed: dict[str, Observed], planned: set[str]
    ) -> list[Action]:
        """Restarts for replicas whose pod namespace was rebuilt under them (a reboot, or
        namespaces deleted while the agent was away): they still run in the old one, which
        has lost its link to the team, so only a restart puts them back on the network."""
        if self.mesh is None:
            return []
        out = []
        for spec in desired.replicas:
            obs = observed.get(spec.id)
            if spec.id in planned or obs is None or spec.pod_netns is None:
                continue
            pid = obs.status.pid
            if obs.status.state != ReplicaState.RUNNING or pid is None:
                continue
            if not self.mesh.pod_ready(spec):
                continue  # wait for the namespace before restarting into it
            if not _in_netns(pid, spec.pod_netns):
                out.append(
                    Action(ActionKind.RESTART, spec.id, "pod network was rebuilt", spec, obs.spec)
                )
        return out

    async def observe(self) -> dict[str, Observed]:
        observed: dict[str, Observed] = dict(self._refused_replicas)
        for rt in self.runtimes.values():
            for rid in await rt.list():
                spec = await rt.spec_of(rid)
                if spec is None:
                    continue
                with contextlib.suppress(KledError):
                    observed[rid] = Observed(spec=spec, status=await rt.inspect(rid))
        return observed

    async def _execute(self, action: Action) -> None:
        if action.kind == ActionKind.RESTART and action.spec is not None:
            # new contents of a Config or Secret volume: written in place, as Kubernetes does
            update = getattr(self.runtimes.get(action.spec.runtime), "update_files", None)
            if update is not None and await update(action.spec):
                return
        if action.current is not None:
            if self._refused_replicas.pop(action.replica_id, None) is None:
                old = self.runtimes.get(action.current.runtime)
                if old is not None:
                    await self._drain(old, action.current)
                    await old.stop(action.replica_id)
                    self.probers.stopped(action.replica_id)
                    self._restart_reasons.pop(action.replica_id, None)
                    if self.mesh is not None and action.kind == ActionKind.STOP:
                        self.mesh.release({action.replica_id})
        if action.kind == ActionKind.STOP or action.spec is None:
            return
        spec = action.spec
        rt = self.runtimes.get(spec.runtime)
        if rt is None:
            raise PermanentError(f"runtime {spec.runtime.value!r} is not available on this node")
        if self.mesh is not None and spec.pod_netns is None:
            # a retry: the pod may have come since it was planned
            spec = with_fields(self.mesh.place(spec), self.node)
        no_pod_yet = self._awaits_pod(spec)
        if no_pod_yet or (
            spec.pod_netns is not None and (self.mesh is None or not self.mesh.pod_ready(spec))
        ):
            # Started now, it would land outside its pod (to be restarted into it once the
            # pod comes, after it looked ready) or fail on a missing namespace.
            message = (
                "waiting for a pod address on this node"
                if no_pod_yet
                else f"waiting for its pod network ({spec.pod_ip}) on this node"
            )
            if spec.id not in self._network_waits:
                self._network_waits.add(spec.id)
                self._status_changed(
                    ReplicaStatus(
                        id=spec.id,
                        state=ReplicaState.PENDING,
                        reason="NetworkNotReady",
                        message=message,
                        generation=spec.generation,
                    )
                )
            # Looked at again soon: the pod network is usually a pass of the mesh away, and a
            # request may be held at a gateway for this replica (scale from zero).
            raise TemporaryError(f"{spec.resource_name}: {message}", delay=0.2)
        self._network_waits.discard(spec.id)
        self._pod_waits.pop(spec.id, None)
        log.info("%s %s: %s", spec.resource_name, action.kind.value, action.reason)
        await rt.start(spec)

    def _awaits_pod(self, spec: ReplicaSpec) -> bool:
        """Whether a replica the desired network gives no pod yet should wait for one: on a
        node with the mesh every replica gets a pod, usually a pass of the control plane
        after it is placed (a team new to the node needs its addresses first). It waits
        up to ``POD_WAIT_SECONDS``, then starts without one rather than never."""
        if self.mesh is None or spec.pod_netns is not None:
            return False
        now = time.monotonic()
        since = self._pod_waits.setdefault(spec.id, now)
        if now - since < POD_WAIT_SECONDS:
            return True
        log.warning(
            "%s got no pod address in %ds: starting it outside the team network",
            spec.resource_name,
            POD_WAIT_SECONDS,
        )
        return False

    # -- graceful stop ----------------------------------------------------------------------
    async def _drain(self, rt: Runtime, spec: ReplicaSpec) -> None:
        """Take a replica out of service before it is stopped: not ready (reported, so the
        control plane drops it from every gateway's backends), wait until this host's
        gateway has dropped it and give the others a moment to do the same, then run its
        preStop hook. SIGTERM comes after (the runtime's ``stop``)."""
        rid = spec.id
        try:
            status = await rt.inspect(rid)
        except KledError:
            return
        if status.state != ReplicaState.RUNNING:
            return
        was_ready = self.probers.ready(spec, status)
        self.probers.stopping(rid)
        self._status_changed(status, event=False)  # ready: False
        grace = float(spec.termination_grace_period_seconds or 30)
        self._emit(AgentEvent(node=self.node, replica_id=rid, reason="Killing",
                              message=f"stopping (grace {grace:g}s)"))  # fmt: skip
        if self.mesh is not None and spec.pod_ip is not None:
            loop = asyncio.get_running_loop()
            until = loop.time() + self.drain_timeout
            serving = self.mesh.serving(spec.pod_ip)
            # This host's gateway may have dropped it before the drain began (its network
            # came with the same desired state), but the other hosts' gateways apply that
            # change on their own time: a replica that served gets the settle either way.
            # One that never got ready was never a backend. If it is listed again by then
            # (a network pass that began before the change ended after it: ``serving``
            # counts that pass), it waits and settles again.
            waiting = serving or was_ready
            while waiting:
                while self.mesh.serving(spec.pod_ip) and loop.time() < until:
                    await asyncio.sleep(0.1)
                log.debug("%s: %gs for the other gateways", spec.resource_name, self.drain_settle)
                await asyncio.sleep(self.drain_settle)
                waiting = self.mesh.serving(spec.pod_ip) and loop.time() < until
            if self.mesh.serving(spec.pod_ip):
                log.warning(
                    "%s is still among this host's service backends after %gs; stopping it anyway",
                    spec.resource_name,
                    self.drain_timeout,
                )
            else:  # also when the gateway had dropped it before the drain began
                log.info("%s left this host's service backends", spec.resource_name)
        if spec.pre_stop is not None:
            ok, what = await run_handler(spec, spec.pre_stop, grace, self._exec_planner(spec))
            log.info("%s preStop hook: %s", spec.resource_name, what)
            if not ok:
                self._emit(AgentEvent(node=self.node, replica_id=rid, type=EventType.WARNING,
                                      reason="FailedPreStopHook", message=what))  # fmt: skip

    # -- probes -------------------------------------------------------------------------------
    def _exec_planner(self, spec: ReplicaSpec) -> ExecPlanner:
        rt = self.runtimes.get(spec.runtime)
        if rt is None:
            raise PermanentError(f"runtime {spec.runtime.value!r} is not available on this node")
        return rt.exec_plan

    async def _probe_loop(self) -> None:
        """Keep a prober on every running replica with probes: on each status change
        and every heartbeat interval."""
        while True:
            await wait_event(self._probe_kick, self.heartbeat_interval)
            self._probe_kick.clear()
            try:
                observed = await self.observe()
            except KledError as err:
                log.debug("node/%s probes not synced: %s", self.node, err)
                continue
            self.probers.sync({rid: (o.spec, o.status) for rid, o in observed.items()})

    def _ready_changed(self, replica_id: str) -> None:
        self._spawn(self._report_now(replica_id))

    async def _report_now(self, replica_id: str) -> None:
        for rt in self.runtimes.values():
            with contextlib.suppress(KledError):
                self._status_changed(await rt.inspect(replica_id), event=False)
                return

    def _probe_restart(self, spec: ReplicaSpec, message: str) -> None:
        """A liveness (or startup) probe gave up on the replica: restart it through its
        runtime's restart policy, as a crash would, with the reason kept in its status."""
        log.warning("%s %s; restarting", spec.resource_name, message)
        self._restart_reasons[spec.id] = message
        self._emit(AgentEvent(node=self.node, replica_id=spec.id, type=EventType.WARNING,
                              reason="Unhealthy", message=f"{message}; restarting"))  # fmt: skip
        self._spawn(self._kill(spec))

    async def _kill(self, spec: ReplicaSpec) -> None:
        rt = self.runtimes.get(spec.runtime)
        if rt is None:
            return
        try:
            status = await rt.inspect(spec.id)
        except KledError:
            return
        pid = status.pid
        if pid is None or status.state != ReplicaState.RUNNING:
            return
        self._status_changed(status.model_copy(update={"ready": False}), event=False)
        kill = os.killpg if spec.runtime == RuntimeKind.PROCESS else os.kill
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        until = loop.time() + float(spec.termination_grace_period_seconds or 30)
        while loop.time() < until and psutil.pid_exists(pid):
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _emit(self, event: AgentEvent) -> None:
        self._out.put_nowait(_Out("event", event, f"{self.node}.ev.{uuid.uuid4().hex}"))

    def _refused(self, action: Action, err: KledError) -> None:
        if action.spec is None:
            log.error("replica/%s %s failed: %s", action.replica_id, action.kind, err)
            return
        reason = "RuntimeUnavailable" if "runtime" in str(err) else "StartError"
        status = ReplicaStatus(
            id=action.replica_id,
            state=ReplicaState.FAILED,
            reason=reason,
            message=str(err),
            generation=action.spec.generation,
        )
        self._refused_replicas[action.replica_id] = Observed(spec=action.spec, status=status)
        self._status_changed(status)

    # -- what the agent observes ----------------------------------------
    def _status_changed(self, status: ReplicaStatus, *, event: bool = True) -> None:
        """Report a replica's status; ``event``: also the event its state calls for (a
        change the runtime saw, not one of readiness alone)."""
        status = self._judged(self._with_pod_ip(status))
        if status.state == ReplicaState.RUNNING:
            self._probe_kick.set()
        report = ReplicaStatusReport(node=self.node, replica=status)
        self._out.put_nowait(_Out("status", report, f"{self.node}.st.{uuid.uuid4().hex}"))
        found = _event_for(self.node, status) if event else None
        if found is not None:
            self._emit(found)

    def _workspace_status(self, status: ReplicaStatus) -> None:
        report = ReplicaStatusReport(node=self.node, replica=status)
        self._out.put_nowait(_Out("status", report, f"{self.node}.ws.{uuid.uuid4().hex}"))

    def _log_line(self, line: LogLine) -> None:
        if len(self._logs) == self._logs.maxlen:
            self._dropped_logs += 1
        self._logs.append(line)
        self._logs_ready.set()

    def _with_pod_ip(self, status: ReplicaStatus) -> ReplicaStatus:
        desired = self._desired
        if self.mesh is None or desired is None or status.pod_ip is not None:
            return status
        spec = desired.by_id().get(status.id)
        if spec is None:
            return status
        return status.model_copy(update={"pod_ip": self.mesh.place(spec).pod_ip})

    def _judged(self, status: ReplicaStatus, spec: ReplicaSpec | None = None) -> ReplicaStatus:
        """``status`` with what the agent adds: readiness, and why it restarted it."""
        if spec is None and self._desired is not None:
            spec = self._desired.by_id().get(status.id)
        update: dict[str, object] = {}
        if status.ready is None:
            update["ready"] = self.probers.ready(spec, status)
        if status.id in self._restart_reasons:
            update["last_restart_reason"] = self._restart_reasons[status.id]
        return status.model_copy(update=update) if update else status

    def _statuses(self, observed: Iterable[Observed]) -> list[ReplicaStatus]:
        return [self._judged(s, o.spec) for s, o in zip(_statuses(observed), observed, strict=True)]

    async def statuses(self) -> list[ReplicaStatus]:
        return self._statuses(sorted((await self.observe()).values(), key=lambda o: o.id))

    async def heartbeat(self) -> NodeHeartbeat:
        observed = (await self.observe()).values()
        usage, node_usage = None, None
        if self.usage.due():
            running = [
                Running(o.id, o.status.pid, in_pod=_own_netns(o.spec))
                for o in observed
                if o.status.state == ReplicaState.RUNNING and o.status.pid is not None
            ]
            usage, node_usage = await asyncio.to_thread(self.usage.measure, running)
        return NodeHeartbeat(
            usage=usage,
            node_usage=node_usage,
            mesh=await self.mesh.reports() if self.mesh is not None else {},
            node=self.node,
            capacity=self.capacity,
            labels=self.labels,
            capabilities=self.capabilities,
            replicas=self._statuses(sorted(observed, key=lambda o: o.id)),
            apps=sorted({o.spec.app_uid for o in observed if o.spec.app_uid}),
            agent_version=agent_version(),
        )

    # -- sending ----------------------------------------
    async def _heartbeats(self) -> None:
        while True:
            if self.mesh is not None:
                self.mesh.intercepts_changed.clear()  # this heartbeat carries them
            try:
                hb = await self.heartbeat()
                await asyncio.wait_for(
                    self.office.publish_heartbeat(hb), timeout=self.heartbeat_interval * 2
                )
            except (KledError, TimeoutError) as err:
                log.debug("node/%s heartbeat not sent: %s", self.node, err)
            try:
                await self.reconcile()  # also catches drift nobody reported
            except KledError as err:
                log.warning("node/%s reconcile failed: %s", self.node, err)
            await self._next_heartbeat()

    async def _next_heartbeat(self) -> None:
        """Wait one interval, or less once the gateways applied other intercepts."""
        if self.mesh is None:
            await asyncio.sleep(self.heartbeat_interval)
            return
        await wait_event(self.mesh.intercepts_changed, self.heartbeat_interval)

    async def _publish_loop(self) -> None:
        while True:
            item = await self._out.get()
            await self._send(item)

    async def _send(self, item: _Out) -> None:
        delay = 0.5
        while True:
            try:
                if isinstance(item.payload, ReplicaStatusReport):
                    await self.office.publish_status(item.payload, msg_id=item.msg_id)
                else:
                    await self.office.publish_event(item.payload, msg_id=item.msg_id)
                return
            except Forbidden as err:
                log.error("node/%s may not publish %s: %s", self.node, item.kind, err)
                return
            except Unavailable as err:
                log.info("node/%s %s waits for NATS: %s", self.node, item.kind, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _log_loop(self) -> None:
        while True:
            await self._logs_ready.wait()
            self._logs_ready.clear()
            if self._dropped_logs:
                log.warning("node/%s dropped %d log lines", self.node, self._dropped_logs)
                self._dropped_logs = 0
            while self._logs:
                line = self._logs[0]
                try:
                    await self.office.publish_log(self.node, line)
                except Forbidden as err:
                    log.error("node/%s may not publish logs: %s", self.node, err)
                except Unavailable:
                    await asyncio.sleep(1.0)
                    continue
                self._logs.popleft()


def _statuses(observed: Iterable[Observed]) -> list[ReplicaStatus]:
    with_ip = (o.status.model_copy(update={"pod_ip": o.spec.pod_ip}) for o in observed)
    return sorted(with_ip, key=lambda s: s.id)


def _own_netns(spec: ReplicaSpec) -> bool:
    """Whether the replica's network namespace is its own: a pod's, or a container's."""
    return spec.pod_netns is not None or spec.runtime == RuntimeKind.CONTAINER


def _in_netns(pid: int, netns_path: str) -> bool:
    """Whether process ``pid`` runs in the namespace mounted at ``netns_path``; True when
    it cannot be told (the process is gone or not ours to look at)."""
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return True
    try:
        mounted = os.stat(netns_path)
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (mounted.st_dev, mounted.st_ino)


def _event_for(node: str, status: ReplicaStatus) -> AgentEvent | None:
    rid = status.id
    match status.state:
        case ReplicaState.RUNNING:
            return AgentEvent(
                node=node, replica_id=rid, reason="Started", message=f"started pid {status.pid}"
            )
        case ReplicaState.FAILED:
            return AgentEvent(
                node=node,
                replica_id=rid,
                type=EventType.WARNING,
                reason=status.reason or "Failed",
                message=status.message or "failed",
            )
        case ReplicaState.STARTING if status.reason in ("BackOff", "ImagePullBackOff"):
            return AgentEvent(
                node=node,
                replica_id=rid,
                type=EventType.WARNING,
                reason=status.reason,
                message=status.message or "restarting",
            )
        case ReplicaState.SUCCEEDED:
            return AgentEvent(node=node, replica_id=rid, reason="Completed", message="completed")
        case ReplicaState.STOPPED:
            return AgentEvent(node=node, replica_id=rid, reason="Stopped", message="stopped")
    return None
