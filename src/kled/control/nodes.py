"""Node lifecycle from heartbeats: Ready, NotReady, and lost (its replicas move).

An agent heartbeats every few seconds; each heartbeat refreshes ``Node.status``
(capacity, allocatable, capabilities, agent version) and marks the node Ready. A node
that has not been heard from for ``not_ready_after`` seconds becomes NotReady; once it
has been NotReady for ``reschedule_after`` more seconds it is *lost*, and the scheduler
moves its replicas elsewhere. A node being drained (``spec.unschedulable: true``) or
deleted gives up its replicas at once.

Liveness is judged by when the control plane *received* heartbeats, on its own monotonic
clock (:class:`NodeTracker`), never by comparing the agent's clock with ours; the
heartbeat's own time is what ``status.lastHeartbeat`` shows, and it orders heartbeats, so
that a redelivered or late one changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kled.control.scheduling import DEFAULT_MAX_PODS, NodeInfo
from kled.resources.hoststate import AgentEvent, NodeHeartbeat
from kled.resources.meta import iso_timestamp
from kled.resources.quantities import parse_cpu, parse_memory

READY = "Ready"
NOT_READY = "NotReady"
MAX_NODE_EVENTS = 20


def _parse_time(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def deleting(doc: Mapping[str, Any]) -> bool:
    return bool((doc.get("metadata") or {}).get("deletionTimestamp"))


def is_newer(status: Mapping[str, Any], hb: NodeHeartbeat) -> bool:
    """Whether ``hb`` is at least as new as the last heartbeat ``status`` shows."""
    last = _parse_time(status.get("lastHeartbeat"))
    return last is None or hb.time >= last


def _condition(ready: bool, reason: str, message: str, since: str) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }


def apply_heartbeat(status: Mapping[str, Any], hb: NodeHeartbeat) -> dict[str, Any]:
    """``Node.status`` after ``hb``; unchanged if ``hb`` is older than the last one shown."""
    out = copy.deepcopy(dict(status))
    if not is_newer(status, hb):
        return out
    when = iso_timestamp(hb.time)
    out["lastHeartbeat"] = when
    out["capacity"] = {
        "cpuMillicores": hb.capacity.cpu_millicores,
        "memoryBytes": hb.capacity.memory_bytes,
    }
    allocatable = hb.allocatable or hb.capacity
    out["allocatable"] = {
        "cpuMillicores": allocatable.cpu_millicores,
        "memoryBytes": allocatable.memory_bytes,
    }
    out["capabilities"] = sorted(set(hb.capabilities))
    out["agentVersion"] = hb.agent_version
    # uids only: Nodes are read by every team, and a uid names nothing
    out["apps"] = sorted(set(hb.apps))
    merge_mesh_reports(out, hb)
    if out.get("phase") != READY:
        out["phase"] = READY
        out["conditions"] = [_condition(True, "AgentReady", "the agent is heartbeating", when)]
    return out


def merge_mesh_reports(status: dict[str, Any], hb: NodeHeartbeat) -> None:
    """Put the node's WireGuard key and port per team into ``status.mesh.<team>``.

    Merged key by key: the mesh controller writes ``ip``, ``podSubnet`` and ``dns`` into the
    same entries. A team the agent stops reporting keeps its last key (the agent keeps the
    key file, so the key is still the node's); the mesh controller drops the entry when the
    node leaves the team. Only entries the mesh controller made are filled: a late heartbeat
    must not bring back a team the node has just left. ``fallback`` lists the intercepts the
    node's gateway is falling back on (see ``api/intercepts.py``).
    """
    mesh = status.get("mesh") or {}
    for team, report in sorted(hb.mesh.items()):
        entry = mesh.get(team)
        if not isinstance(entry, dict):
            continue
        if entry.get("publicKey") != report.public_key:
            entry["publicKey"] = report.public_key
        if entry.get("listenPort") != report.listen_port:
            entry["listenPort"] = report.listen_port
        # Intercepts this gateway sends back to the replicas (their device is silent);
        # absent when none, so that a quiet node's status does not churn.
        if report.fallback:
            entry["fallback"] = sorted(report.fallback)
        else:
            entry.pop("fallback", None)
        # What this gateway has applied: what `kled intercept start|stop` wait for.
        if report.intercepts:
            entry["intercepts"] = sorted(report.intercepts)
        else:
            entry.pop("intercepts", None)


def mark_not_ready(status: Mapping[str, Any], silent_for: float, now: datetime) -> dict[str, Any]:
    """``Node.status`` of a node not heard from for ``silent_for`` seconds."""
    out = copy.deepcopy(dict(status))
    if out.get("phase") == NOT_READY:
        return out
    out["phase"] = NOT_READY
    last = out.get("lastHeartbeat") or "never"
    out["conditions"] = [
        _condition(
            False,
            "HeartbeatMissed",
            f"no heartbeat for {silent_for:.0f}s (last: {last}); is `kled agent` running?",
            iso_timestamp(now),
        )
    ]
    return out


def add_node_event(status: Mapping[str, Any], ev: AgentEvent) -> dict[str, Any]:
    """``Node.status`` with an agent's node-level event added once (newest 20 kept)."""
    out = copy.deepcopy(dict(status))
    entry = {
        "time": iso_timestamp(ev.time),
        "type": ev.type.value,
        "reason": ev.reason,
        "message": ev.message,
    }
    events = [e for e in out.get("events") or [] if e != entry] + [entry]
    events.sort(key=lambda e: str(e.get("time") or ""))
    out["events"] = events[-MAX_NODE_EVENTS:]
    return out


def _quantity(value: Any, parse: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(parse(value))
    except Exception:  # a user-written capacity we cannot read does not limit placement
        return None


def node_info(doc: Mapping[str, Any], *, lost: bool = False) -> NodeInfo:
    """The scheduler's view of a Node document."""
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    status = doc.get("status") or {}
    taints = spec.get("taints") or []
    hard = any(t.get("effect") in ("NoSchedule", "NoExecute") for t in taints)
    soft = any(t.get("effect") == "PreferNoSchedule" for t in taints)
    room = status.get("allocatable") or status.get("capacity") or {}
    declared = spec.get("capacity") or {}
    cpu = room.get("cpuMillicores")
    memory = room.get("memoryBytes")
    if cpu is None:
        cpu = _quantity(declared.get("cpu"), parse_cpu)
    if memory is None:
        memory = _quantity(declared.get("memory"), parse_memory)
    return NodeInfo(
        name=str(meta["name"]),
        # every node also carries its own name, so that a workload can be pinned to it
        labels={**(meta.get("labels") or {}), "kled.io/hostname": str(meta["name"])},
        ready=status.get("phase") == READY and not deleting(doc),
        schedulable=not spec.get("unschedulable") and not deleting(doc) and not hard,
        lost=lost or deleting(doc),
        cpu_millicores=None if cpu is None else int(cpu),
        memory_bytes=None if memory is None else int(memory),
        capabilities=frozenset(str(c) for c in status.get("capabilities") or []),
        avoid=soft,
        max_pods=_pods(declared.get("pods")),
    )


def _pods(value: Any) -> int:
    """``spec.capacity.pods`` (validated on write), else the default limit."""
    return value if isinstance(value, int) and not isinstance(value, bool) else DEFAULT_MAX_PODS


def drain(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The Node document with scheduling turned off: its replicas move elsewhere."""
    out = copy.deepcopy(dict(doc))
    out.setdefault("spec", {})["unschedulable"] = True
    return out


@dataclass
class NodeTracker:
    """When each node was last heard from, on the control plane's monotonic clock."""

    not_ready_after: float = 10.0
    reschedule_after: float = 30.0
    heard: dict[str, float] = field(default_factory=dict)
    not_ready_since: dict[str, float] = field(default_factory=dict)

    def start(self, nodes: Iterable[tuple[str, bool]], now: float) -> None:
        """After a (re)start: every node gets a full grace period from ``now``."""
        for name, ready in nodes:
            self.heard[name] = now
            if not ready:
                self.not_ready_since[name] = now

    def heartbeat(self, node: str, now: float) -> None:
        self.heard[node] = now
        self.not_ready_since.pop(node, None)

    def forget(self, node: str) -> None:
        self.heard.pop(node, None)
        self.not_ready_since.pop(node, None)

    def silent(self, now: float) -> dict[str, float]:
        """Nodes not heard from for ``not_ready_after``, with how long they have been silent."""
        return {
            name: now - at for name, at in self.heard.items() if now - at >= self.not_ready_after
        }

    def went_not_ready(self, node: str, now: float) -> None:
        self.not_ready_since.setdefault(node, now)

    def lost(self, now: float) -> set[str]:
        """Nodes NotReady for ``reschedule_after`` or longer: their replicas move."""
        return {
            name
            for name, since in self.not_ready_since.items()
            if now - since >= self.reschedule_after
        }
