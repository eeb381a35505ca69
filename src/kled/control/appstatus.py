"""``App.status`` from placements and agents' reports, as pure functions.

Two sources meet in an app's status: the scheduler (where each replica is, or why it is
Pending) and the agents (what each replica is doing: state, restarts, last exit code).
:func:`fold` combines them with the previous status into the next one, keeping what other
controllers wrote there (``ip``, ``dns``). Everything here is idempotent: folding the same
report or event twice gives the same status, so a redelivered message changes nothing.

The phase, from the replicas:

- ``Stopped``: zero replicas wanted;
- ``Failed``: the app cannot be sent to nodes (a bad ``envFrom`` reference, say), or no
  replica runs and at least one has failed;
- ``Running``: every wanted replica is Running;
- ``Degraded``: some replicas run, not all; or a replica's node stopped reporting
  (its state is ``Unknown`` until the node comes back or the replica moves);
- ``Pending``: nothing runs yet and nothing has failed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kled.control.desired import BadReference
from kled.control.rollout import Replica, Target, changes, progress
from kled.control.scheduling import Placement
from kled.resources.hoststate import ReplicaState, ReplicaStatus
from kled.resources.meta import iso_timestamp

MAX_EVENTS = 20

#: the state shown for a replica whose node stopped reporting (it may still run)
UNKNOWN = "Unknown"

#: reasons this module sets (not an agent), cleared once their cause is gone
_OURS = frozenset(
    {"NodeNotReady", "ConfigNotFound", "SecretNotFound", "InvalidSecret", "UnsupportedRuntime",
     "InvalidSpec"}
)  # fmt: skip

#: the fields of one replica entry that come from its agent
_OBSERVED = (
    "state", "restarts", "lastExitCode", "reason", "message", "startedAt", "generation", "podIP",
    "ready", "lastRestartReason", "containers",
)  # fmt: skip


def is_ready(entry: Mapping[str, Any]) -> bool:
    """Whether a replica entry may serve: Running, and not reported not-ready by its agent
    (a readiness probe failing, or the replica stopping); without a ``ready`` key (an older
    agent, or no report yet) Running is ready, as before probes existed."""
    return entry.get("state") == ReplicaState.RUNNING.value and entry.get("ready") is not False


@dataclass(frozen=True)
class Report:
    """One replica's status as reported by the agent of ``node``."""

    node: str
    status: ReplicaStatus


def event(
    time: datetime | str,
    reason: str,
    message: str,
    *,
    type: str = "Normal",
    replica: int | None = None,
) -> dict[str, Any]:
    """An entry of ``status.events``."""
    when = time if isinstance(time, str) else iso_timestamp(time)
    return {"time": when, "type": type, "reason": reason, "message": message, "replica": replica}


def add_events(
    events: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """``events`` with ``new`` added once each, oldest first, the newest MAX_EVENTS kept."""
    out = [dict(e) for e in events]
    for item in new:
        if dict(item) not in out:
            out.append(dict(item))
    out.sort(key=lambda e: str(e.get("time") or ""))
    return out[-MAX_EVENTS:]


def _entry(index: int, node: str | None) -> dict[str, Any]:
    return {
        "index": index,
        "node": node,
        "state": ReplicaState.PENDING.value,
        "restarts": 0,
        "lastExitCode": None,
        "reason": None,
        "message": None,
        "startedAt": None,
    }


def _observe(entry: dict[str, Any], status: ReplicaStatus) -> None:
    entry.update(
        state=status.state.value,
        restarts=status.restarts,
        lastExitCode=status.last_exit_code,
        reason=status.reason,
        message=status.message,
        startedAt=iso_timestamp(status.started_at) if status.started_at else None,
        generation=status.generation,
    )
    # The address the replica's pod has in its team's mesh (the agent reports what it was
    # given); kept with the replica, since it belongs to this replica on this node — a
    # replica that moves starts a fresh entry. Replicas without a pod have no such key.
    if status.pod_ip:
        entry["podIP"] = status.pod_ip
    else:
        entry.pop("podIP", None)
    # Only agents that judge readiness say so; the key stays absent otherwise.
    if status.ready is not None:
        entry["ready"] = status.ready
    else:
        entry.pop("ready", None)
    if status.last_restart_reason:
        entry["lastRestartReason"] = status.last_restart_reason
    else:
        entry.pop("lastRestartReason", None)
    if status.containers:  # the pod's sidecars: running, restarts, last exit code
        entry["containers"] = {
            name: {"running": c.running, "restarts": c.restarts, "lastExitCode": c.last_exit_code}
            for name, c in sorted(status.containers.items())
        }
    else:
        entry.pop("containers", None)


def is_stale(previous: Mapping[str, Any] | None, status: ReplicaStatus) -> bool:
    """A report about an older restart generation than the one already shown."""
    if previous is None:
        return False
    return status.generation < int(previous.get("generation") or 0)


def replica_entries(
    previous: Sequence[Mapping[str, Any]],
    placements: Sequence[Placement],
    *,
    reports: Mapping[int, Report] | None = None,
    node_ready: Mapping[str, bool] | None = None,
    bad: BadReference | None = None,
    revisions: Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    """One entry per wanted replica, by index; ``revisions`` says which revision each runs."""
    before = {int(e["index"]): e for e in previous if isinstance(e, Mapping) and "index" in e}
    out: list[dict[str, Any]] = []
    for placement in sorted(placements, key=lambda p: p.index):
        entry = _entry(placement.index, placement.node)
        old = before.get(placement.index)
        revision = (revisions or {}).get(placement.index)
        if revision:
            entry["revision"] = revision
        elif revision is None and old is not None and old.get("revision"):
            entry["revision"] = old["revision"]
        if (
            old is not None
            and old.get("node") == placement.node
            and placement.node
            and old.get("revision") in (None, entry.get("revision"))
        ):
            # Same replica on the same node: what its agent said last still holds.
            for name in _OBSERVED:
                if name in old:
                    entry[name] = copy.deepcopy(old[name])
        report = (reports or {}).get(placement.index)
        if (
            report is not None
            and report.node == placement.node
            and not is_stale(entry, report.status)
        ):
            _observe(entry, report.status)
        if placement.node is None:
            entry.update(
                state=ReplicaState.PENDING.value,
                reason=placement.reason,
                message=placement.message,
            )
        elif bad is not None:
            entry.update(state=ReplicaState.FAILED.value, reason=bad.reason, message=bad.message)
        elif node_ready is not None and not node_ready.get(placement.node, False):
            if entry["state"] != ReplicaState.PENDING.value or entry.get("generation") is not None:
                entry.update(
                    state=UNKNOWN,
                    reason="NodeNotReady",
                    message=f"node {placement.node} stopped reporting; the replica moves "
                    "to another node if it does not come back",
                )
            else:
                entry.update(reason="NodeNotReady", message=f"node {placement.node} is NotReady")
        elif entry.get("reason") in _OURS or entry["state"] == UNKNOWN:
            # The cause went away; until the agent says more, the replica is starting.
            entry.update(state=ReplicaState.PENDING.value, reason=None, message=None)
        if entry["state"] == ReplicaState.PENDING.value and placement.node and not entry["reason"]:
            entry.update(
                reason="Scheduled", message=f"waiting for node {placement.node} to start it"
            )
        out.append(entry)
    return out


def phase(wanted: int, entries: Sequence[Mapping[str, Any]], bad: BadReference | None) -> str:
    if wanted == 0:
        return "Stopped"
    if bad is not None:
        return "Failed"
    running = sum(1 for e in entries if e.get("state") == ReplicaState.RUNNING.value)
    failed = sum(1 for e in entries if e.get("state") == ReplicaState.FAILED.value)
    if running >= wanted:
        return "Running"
    if running == 0 and failed:
        return "Failed"
    unknown = sum(1 for e in entries if e.get("state") == UNKNOWN)
    if running == 0 and not unknown:
        return "Pending"
    return "Degraded"


def fold(
    app: Mapping[str, Any],
    placements: Sequence[Placement],
    *,
    reports: Mapping[int, Report] | None = None,
    node_ready: Mapping[str, bool] | None = None,
    bad: BadReference | None = None,
    events: Sequence[Mapping[str, Any]] = (),
    revisions: Mapping[int, str] | None = None,
    rollout: Target | None = None,
    replicas: int | None = None,
    autoscale: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The next ``status`` of ``app``: its current status with the replica part redone,
    and, given ``rollout``, its revisions and how far the rollout got. ``replicas`` is how
    many are wanted when not ``spec.replicas`` (an autoscaled app), whose autoscaler's
    latest view ``autoscale`` is kept as ``status.autoscale``."""
    status = copy.deepcopy(dict(app.get("status") or {}))
    spec = app.get("spec") or {}
    wanted = int(spec.get("replicas", 1)) if replicas is None else replicas
    if not spec.get("autoscale"):
        status.pop("autoscale", None)
    elif autoscale is not None:
        status["autoscale"] = dict(autoscale)
    entries = replica_entries(
        status.get("replicas") or [],
        placements,
        reports=reports,
        node_ready=node_ready,
        bad=bad,
        revisions=revisions,
    )
    if rollout is not None:
        events = [*events, *_rollout(status, entries, wanted, rollout)]
    status["replicas"] = entries
    status["readyReplicas"] = sum(1 for e in entries if is_ready(e))
    status["phase"] = phase(wanted, entries, bad)
    status["observedGeneration"] = int((app.get("metadata") or {}).get("generation") or 0)
    if bad is not None:
        status["reason"], status["message"] = bad.reason, bad.message
    else:
        status.pop("reason", None)
        status.pop("message", None)
    if events or "events" in status:
        status["events"] = add_events(status.get("events") or [], events)
    return status


def placement_events(
    before: Sequence[Placement], after: Sequence[Placement], now: datetime
) -> list[dict[str, Any]]:
    """Events telling what the scheduler changed: placed, moved, Pending."""
    old = {p.index: p for p in before}
    out: list[dict[str, Any]] = []
    for p in after:
        prev = old.get(p.index)
        if prev == p:
            continue
        if p.node is None:
            if prev is None or prev.node is not None or prev.message != p.message:
                out.append(
                    event(now, "FailedScheduling", p.message or "", type="Warning", replica=p.index)
                )
        elif prev is None or prev.node is None:
            out.append(
                event(
                    now, "Scheduled", f"replica {p.index} placed on node {p.node}", replica=p.index
                )
            )
        else:
            out.append(
                event(
                    now,
                    "Rescheduled",
                    f"replica {p.index} moved from node {prev.node} to node {p.node}",
                    type="Warning",
                    replica=p.index,
                )
            )
    return out


def _rollout(
    status: dict[str, Any], entries: Sequence[Mapping[str, Any]], wanted: int, target: Target
) -> list[dict[str, Any]]:
    """Write ``status.rollout`` and ``status.revisions``; the events of what changed."""
    previous = status.get("rollout")
    now = progress(
        previous,
        revision=target.number,
        replicas=wanted,
        target=target.revision,
        current=[
            Replica(int(e["index"]), str(e.get("revision") or target.revision), is_ready(e))
            for e in entries
        ],
        paused=target.paused,
        deadline_seconds=target.deadline_seconds,
        now=target.now,
    )
    status["rollout"] = now.to_status()
    status["revisions"] = target.history
    return [event(target.now, reason, message, type=kind)
            for kind, reason, message in changes(previous, now)]  # fmt: skip
