"""The prober's rules as transitions: results in, started/ready/restart out."""

from __future__ import annotations

from kled.agent.probes import ProbeKind, ProbeState, Restart
from kled.resources.hoststate import ProbeSpec, ReplicaSpec

R, L, S = ProbeKind.READINESS, ProbeKind.LIVENESS, ProbeKind.STARTUP


def _spec(**probes: ProbeSpec) -> ReplicaSpec:
    return ReplicaSpec(team="t", environment="dev", app="a", index=0, command=["x"], **probes)


def _http(**kw: float) -> ProbeSpec:
    return ProbeSpec(kind="httpGet", port=8080, path="/healthz", **kw)  # type: ignore[arg-type]


def test_without_probes_a_running_replica_is_ready_and_nothing_runs() -> None:
    state = ProbeState.of(_spec())
    assert state.ready and state.started
    assert not any(state.active(k) for k in ProbeKind)


def test_readiness_starts_not_ready_and_follows_the_thresholds() -> None:
    state = ProbeState.of(_spec(readiness_probe=_http(success_threshold=2, failure_threshold=2)))
    assert not state.ready and state.active(R)
    state.record(R, True)
    assert not state.ready  # one success of two
    state.record(R, True)
    assert state.ready
    state.record(R, False, "HTTP 500")
    assert state.ready  # one failure of two
    state.record(R, True)
    state.record(R, False, "HTTP 500")
    assert state.ready  # the streak was broken
    assert state.record(R, False, "HTTP 500") is None
    assert not state.ready
    state.record(R, True)
    assert not state.ready
    state.record(R, True)
    assert state.ready


def test_liveness_restarts_after_failure_threshold_in_a_row_and_then_stops_judging() -> None:
    state = ProbeState.of(_spec(liveness_probe=_http(failure_threshold=3)))
    assert state.ready  # no readiness probe: ready
    assert state.record(L, False, "HTTP 500") is None
    assert state.record(L, True) is None
    assert state.record(L, False, "HTTP 500") is None
    assert state.record(L, False, "HTTP 500") is None
    assert state.record(L, False, "HTTP 500") == Restart("Liveness probe failed: HTTP 500")
    assert not state.ready and not state.active(L)
    assert state.record(L, False, "late") is None


def test_startup_gates_readiness_and_liveness_until_it_passes() -> None:
    state = ProbeState.of(
        _spec(
            startup_probe=_http(failure_threshold=5),
            liveness_probe=_http(),
            readiness_probe=_http(),
        )
    )
    assert not state.started and not state.ready
    assert state.active(S) and not state.active(L) and not state.active(R)
    assert state.record(L, False, "ignored") is None  # liveness is not judged yet
    state.record(S, False, "connection refused")
    state.record(S, True)
    assert state.started and not state.active(S)
    assert state.active(L) and state.active(R)
    assert not state.ready  # now readiness decides
    state.record(R, True)
    assert state.ready


def test_startup_failing_restarts_with_its_reason() -> None:
    state = ProbeState.of(_spec(startup_probe=_http(failure_threshold=2)))
    assert state.record(S, False, "connection refused") is None
    assert state.record(S, False, "connection refused") == Restart(
        "Startup probe failed: connection refused"
    )


def test_a_startup_probe_alone_makes_the_replica_ready_once_it_passes() -> None:
    state = ProbeState.of(_spec(startup_probe=_http()))
    assert not state.ready
    state.record(S, True)
    assert state.ready


def test_a_stopping_replica_is_not_ready_and_is_no_longer_probed() -> None:
    state = ProbeState.of(_spec(readiness_probe=_http(), liveness_probe=_http()))
    state.record(R, True)
    assert state.ready
    state.stop()
    assert not state.ready
    assert not state.active(R) and not state.active(L)
    assert state.record(L, False, "HTTP 500") is None
