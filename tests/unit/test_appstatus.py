"""App.status folded from placements and agents' reports: phases, replicas, events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kled.control.appstatus import (
    MAX_EVENTS,
    UNKNOWN,
    Report,
    event,
    fold,
    placement_events,
)
from kled.control.desired import BadReference
from kled.control.scheduling import Placement
from kled.resources.hoststate import ReplicaState, ReplicaStatus

T0 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def app(replicas: int = 2, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": "App",
        "metadata": {"name": "api", "team": "acme", "environment": "dev", "generation": 3},
        "spec": {"replicas": replicas},
        "status": status or {},
    }


def running(index: int, **kw: Any) -> ReplicaStatus:
    return ReplicaStatus(
        id=f"acme.dev.api.{index}", state=ReplicaState.RUNNING, started_at=T0, pid=10, **kw
    )


PLACED = [Placement(0, "a"), Placement(1, "b")]
READY = {"a": True, "b": True}


def test_placed_but_unreported_is_pending_with_its_node() -> None:
    status = fold(app(), PLACED, node_ready=READY)
    assert status["phase"] == "Pending"
    assert status["readyReplicas"] == 0
    assert status["observedGeneration"] == 3
    first = status["replicas"][0]
    assert first["node"] == "a" and first["state"] == "Pending"
    assert first["reason"] == "Scheduled" and "node a" in first["message"]


def test_all_running_is_running() -> None:
    status = fold(app(), PLACED, node_ready=READY, reports={0: Report("a", running(0))})
    assert status["phase"] == "Degraded"  # one of two
    status = fold(
        app(status=status), PLACED, node_ready=READY, reports={1: Report("b", running(1))}
    )
    assert status["phase"] == "Running"
    assert status["readyReplicas"] == 2
    assert status["replicas"][1]["startedAt"] == "2026-11-23T01:00:00Z"


def test_some_running_is_degraded() -> None:
    status = fold(app(), PLACED, node_ready=READY, reports={0: Report("a", running(0))})
    assert status["phase"] == "Degraded"


def test_failed_replica_reports_exit_code_and_reason() -> None:
    failed = ReplicaStatus(
        id="acme.dev.api.0",
        state=ReplicaState.FAILED,
        restarts=4,
        last_exit_code=127,
        reason="CommandNotFound",
        message="no such file: /bin/nope",
    )
    status = fold(app(replicas=1), PLACED[:1], node_ready=READY, reports={0: Report("a", failed)})
    assert status["phase"] == "Failed"
    entry = status["replicas"][0]
    assert (entry["restarts"], entry["lastExitCode"], entry["reason"]) == (
        4,
        127,
        "CommandNotFound",
    )


def test_same_report_twice_changes_nothing() -> None:
    reports = {0: Report("a", running(0, restarts=1))}
    once = fold(app(), PLACED, node_ready=READY, reports=reports)
    twice = fold(app(status=once), PLACED, node_ready=READY, reports=reports)
    assert once == twice


def test_report_from_the_wrong_node_is_ignored() -> None:
    status = fold(app(), PLACED, node_ready=READY, reports={0: Report("b", running(0))})
    assert status["replicas"][0]["state"] == "Pending"


def test_older_generation_report_is_ignored() -> None:
    new = fold(app(), PLACED, node_ready=READY, reports={0: Report("a", running(0, generation=5))})
    old = ReplicaStatus(id="acme.dev.api.0", state=ReplicaState.STOPPED, generation=4)
    after = fold(app(status=new), PLACED, node_ready=READY, reports={0: Report("a", old)})
    assert after["replicas"][0]["state"] == "Running"


def test_moved_replica_forgets_what_the_old_node_said() -> None:
    status = fold(app(), PLACED, node_ready=READY, reports={0: Report("a", running(0))})
    moved = [Placement(0, "b"), Placement(1, "b")]
    after = fold(app(status=status), moved, node_ready=READY)
    assert after["replicas"][0]["state"] == "Pending"
    assert after["replicas"][0]["node"] == "b"


def test_replica_on_a_not_ready_node_is_unknown() -> None:
    status = fold(app(), PLACED, node_ready=READY, reports={0: Report("a", running(0))})
    after = fold(app(status=status), PLACED, node_ready={"a": False, "b": True})
    assert after["replicas"][0]["state"] == UNKNOWN
    assert after["replicas"][0]["reason"] == "NodeNotReady"
    assert after["phase"] == "Degraded"
    back = fold(app(status=after), PLACED, node_ready=READY)
    assert back["replicas"][0]["state"] == "Pending"  # until the agent says again


def test_unschedulable_replica_shows_why() -> None:
    pending = [Placement(0, None, "Unschedulable", "no ready nodes (1 NotReady of 1)")]
    status = fold(app(replicas=1), pending, node_ready={})
    entry = status["replicas"][0]
    assert status["phase"] == "Pending"
    assert entry["node"] is None
    assert entry["message"] == "no ready nodes (1 NotReady of 1)"


def test_bad_reference_fails_every_replica() -> None:
    bad = BadReference("SecretNotFound", "app api: secret 'db' does not exist")
    status = fold(app(), PLACED, node_ready=READY, bad=bad)
    assert status["phase"] == "Failed"
    assert status["reason"] == "SecretNotFound"
    assert {e["state"] for e in status["replicas"]} == {"Failed"}
    assert {e["reason"] for e in status["replicas"]} == {"SecretNotFound"}
    fixed = fold(app(status=status), PLACED, node_ready=READY)
    assert fixed["phase"] == "Pending" and "reason" not in fixed
    assert {e["state"] for e in fixed["replicas"]} == {"Pending"}


def test_zero_replicas_is_stopped() -> None:
    status = fold(app(replicas=0), [], node_ready=READY)
    assert status["phase"] == "Stopped" and status["replicas"] == []


def test_other_writers_fields_are_kept() -> None:
    status = fold(app(status={"ip": "100.64.16.7", "dns": "api.dev.acme.kled.internal"}), PLACED)
    assert status["ip"] == "100.64.16.7" and status["dns"] == "api.dev.acme.kled.internal"


def test_events_are_bounded_and_deduplicated() -> None:
    events = [event(T0 + timedelta(seconds=i), "Started", f"run {i}") for i in range(30)]
    status = fold(app(), PLACED, events=events)
    assert len(status["events"]) == MAX_EVENTS
    assert status["events"][-1]["message"] == "run 29"
    again = fold(app(status=status), PLACED, events=events[-3:])
    assert again["events"] == status["events"]


def test_placement_events_tell_what_moved() -> None:
    before = [Placement(0, "a"), Placement(1, None, "Unschedulable", "no ready nodes")]
    after = [Placement(0, "b"), Placement(1, "a")]
    reasons = [e["reason"] for e in placement_events(before, after, T0)]
    assert reasons == ["Rescheduled", "Scheduled"]
    pending = placement_events([], [Placement(0, None, "Unschedulable", "x")], T0)
    assert pending[0]["type"] == "Warning" and pending[0]["reason"] == "FailedScheduling"
    assert placement_events(after, after, T0) == []


def test_pod_ip_stays_with_its_replica_and_podips_with_the_app() -> None:
    reports = {
        0: Report("a", running(0, pod_ip="100.64.8.10")),
        1: Report("b", running(1, pod_ip="100.64.9.10")),
    }
    given = {"podIPs": {"0": "100.64.8.10", "1": "100.64.9.10"}}  # written by the mesh side
    status = fold(app(status=given), PLACED, node_ready=READY, reports=reports)
    assert [r["podIP"] for r in status["replicas"]] == ["100.64.8.10", "100.64.9.10"]
    assert status["podIPs"] == given["podIPs"]
    # No news from the agents: each replica keeps its address.
    again = fold(app(status=status), PLACED, node_ready=READY)
    assert [r.get("podIP") for r in again["replicas"]] == ["100.64.8.10", "100.64.9.10"]
    # Replica 1 moves to node a: its old node's address is not its address any more.
    moved = fold(app(status=again), [Placement(0, "a"), Placement(1, "a")], node_ready=READY)
    assert moved["replicas"][0]["podIP"] == "100.64.8.10"
    assert "podIP" not in moved["replicas"][1]
    # A replica without a pod namespace (a plain process) has no podIP at all.
    plain = fold(app(), PLACED, node_ready=READY, reports={0: Report("a", running(0))})
    assert "podIP" not in plain["replicas"][0]


def test_a_running_replica_its_agent_calls_not_ready_is_not_counted_ready() -> None:
    reports = {0: Report("a", running(0, ready=False)), 1: Report("b", running(1, ready=True))}
    status = fold(app(), PLACED, node_ready=READY, reports=reports)
    assert status["phase"] == "Running"  # both run
    assert status["readyReplicas"] == 1
    assert status["replicas"][0]["ready"] is False and status["replicas"][1]["ready"] is True
    restarted = running(0, ready=True, last_restart_reason="Liveness probe failed: HTTP 500")
    status = fold(app(status=status), PLACED, node_ready=READY, reports={0: Report("a", restarted)})
    assert status["readyReplicas"] == 2
    assert status["replicas"][0]["lastRestartReason"] == "Liveness probe failed: HTTP 500"
