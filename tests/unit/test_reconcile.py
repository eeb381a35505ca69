"""Desired vs observed → actions, as a pure transition; then the action queue's rules."""

from __future__ import annotations

import asyncio

from kled.agent.reconcile import Action, ActionKind, Observed, Reconciler, plan
from kled.errors import KledError, PermanentError, TemporaryError
from kled.resources.hoststate import (
    HostDesiredState,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    RuntimeKind,
)


def rs(app: str, index: int = 0, **kw: object) -> ReplicaSpec:
    return ReplicaSpec(
        team="acme", environment="dev", app=app, index=index, command=["sleep", "9"], **kw
    )


def running(spec: ReplicaSpec, state: ReplicaState = ReplicaState.RUNNING) -> Observed:
    return Observed(spec=spec, status=ReplicaStatus(id=spec.id, state=state))


def host(*specs: ReplicaSpec) -> HostDesiredState:
    return HostDesiredState(node="n1", replicas=list(specs))


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.kind.value, a.replica_id) for a in actions]


def test_nothing_to_do_when_observed_matches() -> None:
    a, b = rs("api"), rs("api", 1)
    assert plan(host(a, b), {a.id: running(a), b.id: running(b)}) == []


def test_missing_replicas_are_started_and_extra_ones_stopped_first() -> None:
    a, b, old = rs("api"), rs("web"), rs("gone")
    actions = plan(host(a, b), {old.id: running(old)})
    assert kinds(actions) == [
        ("stop", "acme.dev.gone.0"),
        ("start", "acme.dev.api.0"),
        ("start", "acme.dev.web.0"),
    ]
    assert actions[0].current == old and actions[1].spec == a


def test_an_empty_desired_state_stops_everything() -> None:
    a = rs("api")
    assert kinds(plan(host(), {a.id: running(a)})) == [("stop", a.id)]


def test_a_changed_spec_restarts_and_says_what_changed() -> None:
    a = rs("api")
    changed = a.model_copy(update={"env": {"LOG": "debug"}})
    [action] = plan(host(changed), {a.id: running(a)})
    assert action.kind == ActionKind.RESTART
    assert action.reason == "spec changed: env"
    assert (action.current, action.spec) == (a, changed)


def test_a_restart_nonce_restarts_even_an_ended_replica() -> None:
    a = rs("api")
    bumped = a.model_copy(update={"generation": 1})
    ended = running(a, ReplicaState.FAILED)
    assert plan(host(a), {a.id: ended}) == []  # ended stays ended...
    [action] = plan(host(bumped), {a.id: ended})  # ...until `app restart`
    assert (action.kind, action.reason) == (ActionKind.RESTART, "restart requested")


def test_a_runtime_change_is_a_restart_across_runtimes() -> None:
    a = rs("api")
    c = a.model_copy(update={"runtime": RuntimeKind.CONTAINER, "image": "busybox"})
    [action] = plan(host(c), {a.id: running(a)})
    assert action.current is not None and action.spec is not None
    assert (action.current.runtime, action.spec.runtime) == ("process", "container")


def test_plan_is_idempotent_once_applied() -> None:
    a, b = rs("api"), rs("web")
    observed: dict[str, Observed] = {}
    for action in plan(host(a, b), observed):
        assert action.spec is not None
        observed[action.replica_id] = running(action.spec)
    assert plan(host(a, b), observed) == []


# -- the queue ----------------------------------------------------------------------------------


def start(app: str, index: int = 0) -> Action:
    spec = rs(app, index)
    return Action(ActionKind.START, spec.id, "test", spec=spec)


async def test_one_replica_serially_many_in_parallel_bounded() -> None:
    active: dict[str, int] = {}
    peak_total = 0
    peak_same = 0
    done: list[str] = []

    async def execute(action: Action) -> None:
        nonlocal peak_total, peak_same
        active[action.replica_id] = active.get(action.replica_id, 0) + 1
        peak_same = max(peak_same, active[action.replica_id])
        peak_total = max(peak_total, sum(active.values()))
        await asyncio.sleep(0.01)
        active[action.replica_id] -= 1
        done.append(action.replica_id)

    r = Reconciler(execute, workers=3)
    for _ in range(3):
        r.submit([start("api", i) for i in range(10)])
        await asyncio.sleep(0.005)
    await r.idle()
    assert peak_same == 1
    assert peak_total == 3
    assert set(done) == {f"acme.dev.api.{i}" for i in range(10)}
    await r.close()


async def test_a_newer_action_replaces_a_queued_one() -> None:
    gate = asyncio.Event()
    seen: list[str] = []

    async def execute(action: Action) -> None:
        seen.append(action.reason)
        await gate.wait()

    r = Reconciler(execute)
    a = start("api")
    r.submit([a])
    await asyncio.sleep(0)
    for reason in ("second", "third"):
        r.submit([Action(ActionKind.STOP, a.replica_id, reason)])
    gate.set()
    await r.idle()
    assert seen == ["test", "third"]


async def test_temporary_errors_are_retried_and_permanent_ones_reported() -> None:
    calls: dict[str, int] = {}
    reported: list[tuple[str, str]] = []

    async def execute(action: Action) -> None:
        n = calls[action.replica_id] = calls.get(action.replica_id, 0) + 1
        if action.replica_id.endswith("flaky.0") and n < 3:
            raise TemporaryError("port busy", delay=0.01)
        if action.replica_id.endswith("broken.0"):
            raise PermanentError("image is not valid")

    def report(action: Action, err: KledError) -> None:
        reported.append((action.replica_id, str(err)))

    r = Reconciler(execute, on_permanent=report)
    r.submit([start("flaky"), start("broken"), start("fine")])
    await r.idle()
    assert calls == {"acme.dev.flaky.0": 3, "acme.dev.broken.0": 1, "acme.dev.fine.0": 1}
    assert reported == [("acme.dev.broken.0", "image is not valid")]


async def test_an_unexpected_error_is_retried_not_fatal() -> None:
    calls = 0

    async def execute(action: Action) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")

    r = Reconciler(execute, unexpected_delay=0.01)
    r.submit([start("api")])
    await r.idle()
    assert calls == 2
