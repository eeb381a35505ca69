"""The rollout planner as state transitions: replicas (index, revision, ready) in, the
replicas there should be out, with readiness flipped by the test between steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kled.control.rollout import (
    COMPLETE,
    DEADLINE_EXCEEDED,
    PAUSED,
    PROGRESSING,
    STALLED,
    Progress,
    Replica,
    Strategy,
    Templates,
    limits,
    plan,
    progress,
    record,
    strategy_of,
    template,
    template_hash,
    with_template,
)

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


def state(wanted: dict[int, str], ready: set[int]) -> list[Replica]:
    return [Replica(i, rev, i in ready) for i, rev in sorted(wanted.items())]


def test_defaults_for_three_replicas_surge_one_and_keep_all_available() -> None:
    assert limits(Strategy(), 3) == (1, 0)
    assert limits(Strategy(max_surge="50%", max_unavailable="50%"), 3) == (2, 1)
    assert limits(Strategy(max_surge=0, max_unavailable="10%"), 3) == (0, 1)  # never both 0


def test_strategy_of_reads_the_flat_and_the_kubernetes_form() -> None:
    assert strategy_of({}) == Strategy()
    assert strategy_of({"strategy": {"maxSurge": 2}}).max_surge == 2
    nested = {"strategy": {"rollingUpdate": {"maxUnavailable": "50%"}}}
    assert strategy_of(nested).max_unavailable == "50%"


def test_rolling_update_of_three_one_step_at_a_time() -> None:
    current = {0: "a", 1: "a", 2: "a"}
    ready = {0, 1, 2}
    step = plan(3, "b", state(current, ready), Strategy())
    assert step == {0: "a", 1: "a", 2: "a", 3: "b"}  # one surge replica, nothing removed
    assert plan(3, "b", state(step, ready), Strategy()) == step  # waits for readiness
    ready.add(3)
    step = plan(3, "b", state(step, ready), Strategy())
    assert sorted(step.values()) == ["a", "a", "b", "b"] and 3 in step and 4 in step
    seen = [step]
    while any(rev == "a" for rev in step.values()):
        ready |= set(step)  # every new replica gets ready
        step = plan(3, "b", state(step, ready), Strategy())
        seen.append(step)
        assert len(seen) < 10
    assert sorted(step.values()) == ["b", "b", "b"]
    assert all(len(s) <= 4 for s in seen)
    assert plan(3, "b", state(step, ready | set(step)), Strategy()) == step  # done: stays


def test_new_indexes_never_reuse_one_freed_in_the_same_rollout() -> None:
    step = {0: "a", 1: "a", 2: "a"}
    used: set[int] = set(step)
    freed: set[int] = set()
    for _ in range(10):
        nxt = plan(3, "b", state(step, set(step)), Strategy())
        freed |= set(step) - set(nxt)
        assert not (set(nxt) - set(step)) & freed
        used |= set(nxt)
        step = nxt
    assert sorted(step.values()) == ["b", "b", "b"]


def test_recreate_gives_every_index_the_new_revision_at_once() -> None:
    current = state({0: "a", 1: "a"}, {0, 1})
    assert plan(2, "b", current, Strategy(type="Recreate")) == {0: "b", 1: "b"}
    assert plan(3, "b", current, Strategy(type="Recreate")) == {0: "b", 1: "b", 2: "b"}


def test_max_unavailable_without_surge_removes_before_adding() -> None:
    strategy = Strategy(max_surge=0, max_unavailable=1)
    step = plan(3, "b", state({0: "a", 1: "a", 2: "a"}, {0, 1, 2}), strategy)
    assert sorted(step.values()) == ["a", "a", "b"] and len(step) == 3


def test_unready_old_replicas_go_first() -> None:
    strategy = Strategy(max_surge=1, max_unavailable=1)
    step = plan(3, "b", state({0: "a", 1: "a", 2: "a"}, {0, 2}), strategy)
    assert 1 not in step and step[0] == "a" and step[2] == "a"


def test_a_held_rollout_changes_no_revision_and_keeps_its_surge() -> None:
    current = state({0: "a", 1: "a", 2: "a", 3: "b"}, {0, 1, 2})
    assert plan(3, "b", current, Strategy(), hold=True) == {0: "a", 1: "a", 2: "a", 3: "b"}
    # Scaling up while held adds replicas of the revision most replicas run.
    up = plan(5, "b", current, Strategy(), hold=True)
    assert sorted(up.values()) == ["a", "a", "a", "a", "b"]


def test_scaling_without_a_rollout_uses_the_lowest_free_indexes() -> None:
    current = state({3: "b", 4: "b", 5: "b"}, {3, 4, 5})
    assert plan(4, "b", current, Strategy()) == {0: "b", 3: "b", 4: "b", 5: "b"}
    assert plan(2, "b", current, Strategy()) == {3: "b", 4: "b"}


@settings(deadline=None, max_examples=200)
@given(
    replicas=st.integers(1, 8),
    old=st.integers(0, 8),
    surge=st.integers(0, 3),
    unavailable=st.integers(0, 3),
    ready_bits=st.integers(0, 2**16),
)
def test_rolling_never_goes_below_min_available_nor_above_max_total(
    replicas: int, old: int, surge: int, unavailable: int, ready_bits: int
) -> None:
    strategy = Strategy(max_surge=surge, max_unavailable=unavailable)
    s, u = limits(strategy, replicas)
    current = {i: "a" for i in range(max(old, 1))}
    ready = {i for i in current if ready_bits >> i & 1}
    # Take steps, new replicas getting ready one step later, until done.
    step = current
    for _ in range(60):
        before_ready = sum(1 for i in step if i in ready)
        nxt = plan(replicas, "b", state(step, ready), strategy)
        after_ready = sum(1 for i in nxt if i in ready)
        assert len(nxt) <= max(len(step), replicas + s)
        # Ready replicas are removed only down to replicas - unavailable.
        assert after_ready >= min(before_ready, replicas - u)
        ready |= {i for i, rev in step.items() if rev == "b"}
        step = nxt
        if sorted(step.values()) == ["b"] * replicas and set(step) <= ready:
            break
    assert sorted(step.values()) == ["b"] * replicas


def at(previous: Progress | None, current: list[Replica], seconds: float, *,
       paused: bool = False, deadline: int = 60) -> Progress:  # fmt: skip
    """Where a rollout to revision 2 ("b") of one replica stands ``seconds`` after T0."""
    return progress(
        None if previous is None else previous.to_status(),
        revision=2,
        replicas=1,
        target="b",
        current=current,
        paused=paused,
        deadline_seconds=deadline,
        now=T0 + timedelta(seconds=seconds),
    )


def test_progress_from_progressing_to_complete() -> None:
    p = at(None, state({0: "a", 3: "b"}, {0}), 0)
    assert (p.phase, p.counts()) == (PROGRESSING, (1, 0, 1))
    assert at(p, state({3: "b"}, {3}), 5).phase == COMPLETE


def test_no_progress_past_the_deadline_stalls_until_the_counts_move() -> None:
    current = state({0: "a", 3: "b"}, {0})
    first = at(None, current, 0)
    later = at(first, current, 30)
    assert later.phase == PROGRESSING and later.since == first.since
    stalled = at(later, current, 61)
    assert stalled.phase == STALLED and stalled.reason == DEADLINE_EXCEEDED
    assert "old replicas keep serving" in (stalled.message or "")
    assert at(stalled, current, 120).phase == STALLED
    assert at(stalled, state({0: "a", 3: "b"}, {0, 3}), 121).phase == PROGRESSING


def test_paused_is_reported() -> None:
    assert at(None, state({0: "a"}, {0}), 0, paused=True, deadline=1).phase == PAUSED


def test_history_keeps_ten_and_renumbers_a_revision_rolled_back_to() -> None:
    history: list[dict[str, object]] = []
    for n in range(12):
        history, number = record(history, f"h{n}", {"spec": {"n": n}}, "t")
        assert number == n + 1
    assert [e["revision"] for e in history] == list(range(3, 13))
    same, number = record(history, "h11", {}, "t")
    assert same == history and number == 12
    back, number = record(history, "h5", {"spec": {"n": 5}}, "t")
    assert number == 13 and [e["hash"] for e in back][-1] == "h5"
    assert "h5" not in [e["hash"] for e in back[:-1]]


@pytest.mark.parametrize("key", ["replicas", "strategy", "paused", "nodeSelector"])
def test_what_does_not_change_what_runs_is_not_in_the_template(key: str) -> None:
    app = {"spec": {"command": ["x"], key: 1}, "metadata": {}}
    assert key not in template(app)["spec"]


def test_template_hash_sees_env_and_restart_and_with_template_restores() -> None:
    app = {"metadata": {"annotations": {}}, "spec": {"command": ["x"], "replicas": 3}}
    t1 = template(app)
    assert template_hash(t1, {"A": "1"}) != template_hash(t1, {"A": "2"})
    restarted = {"metadata": {"annotations": {"kled.io/restartedAt": "1"}}, "spec": app["spec"]}
    assert template_hash(template(restarted), {}) != template_hash(t1, {})
    changed = {"metadata": {}, "spec": {"command": ["y"], "replicas": 5}}
    back = with_template(changed, t1)
    assert back["spec"] == {"command": ["x"], "replicas": 5}


def test_templates_are_kept_while_uid_generation_stamp_and_env_stay() -> None:
    def app(generation: int | None, command: str, stamp: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "uid": "u1",
            "annotations": {"kled.io/restartedAt": stamp} if stamp else {},
        }
        if generation is not None:
            meta["generation"] = generation
        return {"metadata": meta, "spec": {"command": [command], "replicas": 2}}

    held = Templates()
    first = held.of("api", app(1, "x"), {"A": "1"})
    assert first == (template(app(1, "x")), template_hash(template(app(1, "x")), {"A": "1"}))
    assert held.of("api", app(1, "x"), {"A": "1"})[0] is first[0]  # not built again
    for changed, env in [
        (app(2, "y"), {"A": "1"}),  # the spec changed: the store bumped the generation
        (app(2, "y", stamp="r1"), {"A": "1"}),  # kled rollout restart
        (app(2, "y", stamp="r1"), {"A": "2"}),  # a config the app reads changed
    ]:
        tmpl, digest = held.of("api", changed, env)
        assert (tmpl, digest) == (template(changed), template_hash(template(changed), env))
    # a document that is not the store's (no generation) is never answered from memory
    assert held.of("x", app(None, "x"), {})[1] == template_hash(template(app(None, "x")), {})
    assert held.of("x", app(None, "z"), {})[1] == template_hash(template(app(None, "z")), {})
    held.forget("api")
    assert held.of("api", app(1, "x"), {"A": "1"})[0] is not first[0]
