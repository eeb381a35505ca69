"""The scheduler as a pure function: where replicas go, what stays, and why one is Pending."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from kled.control.nodes import NodeTracker, apply_heartbeat, mark_not_ready, node_info
from kled.control.scheduling import (
    UNSCHEDULABLE,
    AppRequest,
    NodeInfo,
    Placement,
    schedule,
)
from kled.errors import InvalidInput
from kled.resources.hoststate import Capacity, NodeHeartbeat
from kled.resources.kinds import validate

GI = 1024**3


def nodes(*names: str, **kw: object) -> list[NodeInfo]:
    return [NodeInfo(name, **kw) for name in names]  # type: ignore[arg-type]


def where(plan: dict[str, list[Placement]], key: str) -> list[str | None]:
    return [p.node for p in plan[key]]


def test_replicas_of_one_app_spread_across_nodes() -> None:
    plan = schedule(nodes("a", "b", "c"), [AppRequest("t/dev/api", 3)])
    assert sorted(where(plan, "t/dev/api")) == ["a", "b", "c"]  # type: ignore[type-var]
    assert [p.index for p in plan["t/dev/api"]] == [0, 1, 2]


def test_more_replicas_than_nodes_still_balance() -> None:
    plan = schedule(nodes("a", "b"), [AppRequest("t/dev/api", 5)])
    placed = where(plan, "t/dev/api")
    assert placed.count("a") in (2, 3) and placed.count("b") in (2, 3)


def test_least_loaded_node_wins_between_equals() -> None:
    plan = schedule(
        nodes("a", "b"),
        [AppRequest("t/dev/busy", 2, current={0: "a", 1: "a"}), AppRequest("t/dev/new", 1)],
    )
    assert where(plan, "t/dev/new") == ["b"]


def test_existing_placements_stay_when_a_node_joins() -> None:
    current = {0: "a", 1: "a"}
    plan = schedule(nodes("a", "b"), [AppRequest("t/dev/api", 2, current=current)])
    assert where(plan, "t/dev/api") == ["a", "a"]


def test_scale_down_removes_the_highest_indexes() -> None:
    current = {0: "a", 1: "b", 2: "c"}
    plan = schedule(nodes("a", "b", "c"), [AppRequest("t/dev/api", 1, current=current)])
    assert plan["t/dev/api"] == [Placement(0, "a")]


def test_scale_up_keeps_the_old_and_spreads_the_new() -> None:
    plan = schedule(nodes("a", "b"), [AppRequest("t/dev/api", 3, current={0: "a"})])
    assert where(plan, "t/dev/api")[:2] == ["a", "b"]


def test_node_selector_chooses_nodes_by_label() -> None:
    infos = [NodeInfo("a", {"disktype": "hdd"}), NodeInfo("b", {"disktype": "ssd"})]
    plan = schedule(infos, [AppRequest("t/dev/db", 2, node_selector={"disktype": "ssd"})])
    assert where(plan, "t/dev/db") == ["b", "b"]


def test_no_node_matches_the_selector() -> None:
    infos = [NodeInfo(n, {"disktype": "hdd"}) for n in "abc"]
    plan = schedule(infos, [AppRequest("t/dev/db", 1, node_selector={"disktype": "ssd"})])
    (p,) = plan["t/dev/db"]
    assert p.node is None and p.reason == UNSCHEDULABLE
    assert p.message == "0/3 nodes match nodeSelector disktype=ssd"


def test_insufficient_memory_says_how_much_is_needed() -> None:
    infos = nodes("a", "b", memory_bytes=GI // 2, cpu_millicores=4000)
    plan = schedule(infos, [AppRequest("t/dev/big", 1, memory_bytes=GI)])
    (p,) = plan["t/dev/big"]
    assert p.node is None
    assert p.message == "insufficient memory on 2 nodes (needs 1Gi)"


def test_capacity_counts_what_is_already_placed() -> None:
    infos = nodes("a", memory_bytes=2 * GI, cpu_millicores=1000)
    plan = schedule(infos, [AppRequest("t/dev/api", 3, memory_bytes=GI, cpu_millicores=100)])
    assert where(plan, "t/dev/api") == ["a", "a", None]
    assert plan["t/dev/api"][2].message == "insufficient memory on 1 node (needs 1Gi)"


def test_insufficient_cpu() -> None:
    plan = schedule(
        nodes("a", cpu_millicores=1000), [AppRequest("t/dev/api", 1, cpu_millicores=1500)]
    )
    assert plan["t/dev/api"][0].message == "insufficient cpu on 1 node (needs 1500m)"


def test_a_node_takes_at_most_its_pod_limit_and_the_rest_wait_saying_so() -> None:
    # a thousand apps and the first node to be Ready: it does not take them all (its
    # pod subnet could not address them), the others wait for more nodes
    apps = [AppRequest(f"t/dev/app{i:04}", 1) for i in range(300)]
    plan = schedule(nodes("a"), apps)
    placed = [p for key in plan for p in plan[key] if p.node == "a"]
    assert len(placed) == 110
    waiting = [p for key in plan for p in plan[key] if p.node is None]
    assert len(waiting) == 190
    assert waiting[0].message == "too many pods on 1 node (at most 110 each)"
    # a second node takes its share; replicas past a lowered limit stay where they run
    current = {i: "a" for i in range(5)}
    plan = schedule(
        [NodeInfo("a", max_pods=3), NodeInfo("b", max_pods=2)],
        [AppRequest("t/dev/api", 8, current=current)],
    )
    assert where(plan, "t/dev/api") == ["a"] * 5 + ["b", "b", None]


def test_a_nodes_pod_limit_is_its_spec_capacity_pods() -> None:
    doc = {"metadata": {"name": "a"}, "spec": {"capacity": {"pods": 12}}, "status": {}}
    assert node_info(doc).max_pods == 12
    assert node_info({"metadata": {"name": "b"}, "spec": {}}).max_pods == 110
    bad = {"apiVersion": "kled.io/v1", "kind": "Node", "metadata": {"name": "a"}}
    for pods in (0, 241, "many"):
        with pytest.raises(InvalidInput, match=r"spec\.capacity\.pods"):
            validate({**bad, "spec": {"capacity": {"pods": pods}}})


def test_running_replicas_of_other_apps_are_counted_first() -> None:
    # "a" runs an app that takes most of its memory; a new app must not squeeze in.
    infos = nodes("a", "b", memory_bytes=2 * GI)
    apps = [
        AppRequest("t/dev/zzz", 1, memory_bytes=GI + GI // 2, current={0: "a"}),
        AppRequest("t/dev/aaa", 2, memory_bytes=GI),
    ]
    plan = schedule(infos, apps)
    assert where(plan, "t/dev/zzz") == ["a"]
    assert where(plan, "t/dev/aaa") == ["b", "b"]


def test_no_ready_nodes() -> None:
    plan = schedule(nodes("a", "b", ready=False), [AppRequest("t/dev/api", 1)])
    assert plan["t/dev/api"][0].message == "no ready nodes (2 NotReady of 2)"


def test_no_nodes_at_all_says_how_to_add_one() -> None:
    plan = schedule([], [AppRequest("t/dev/api", 1)])
    message = plan["t/dev/api"][0].message or ""
    assert message.startswith("no nodes") and "kled agent" in message


def test_drained_node_gives_up_its_replicas() -> None:
    infos = [NodeInfo("a", schedulable=False), NodeInfo("b")]
    plan = schedule(infos, [AppRequest("t/dev/api", 2, current={0: "a", 1: "b"})])
    assert where(plan, "t/dev/api") == ["b", "b"]


def test_not_ready_node_keeps_replicas_during_the_grace_period() -> None:
    infos = [NodeInfo("a", ready=False), NodeInfo("b")]
    plan = schedule(infos, [AppRequest("t/dev/api", 1, current={0: "a"})])
    assert where(plan, "t/dev/api") == ["a"]


def test_lost_node_replicas_move() -> None:
    infos = [NodeInfo("a", ready=False, lost=True), NodeInfo("b")]
    plan = schedule(infos, [AppRequest("t/dev/api", 1, current={0: "a"})])
    assert where(plan, "t/dev/api") == ["b"]


def test_replicas_on_a_vanished_node_move() -> None:
    plan = schedule(nodes("b"), [AppRequest("t/dev/api", 1, current={0: "gone"})])
    assert where(plan, "t/dev/api") == ["b"]


def test_changed_selector_moves_replicas_off_nodes_that_no_longer_match() -> None:
    infos = [NodeInfo("a", {"zone": "x"}), NodeInfo("b", {"zone": "y"})]
    plan = schedule(
        infos, [AppRequest("t/dev/api", 1, node_selector={"zone": "y"}, current={0: "a"})]
    )
    assert where(plan, "t/dev/api") == ["b"]


def test_container_apps_need_a_container_engine() -> None:
    infos = [
        NodeInfo("a", capabilities=frozenset({"netns"})),
        NodeInfo("b", capabilities=frozenset({"netns", "podman"})),
    ]
    plan = schedule(infos, [AppRequest("t/dev/web", 2, runtime="container")])
    assert where(plan, "t/dev/web") == ["b", "b"]
    plan = schedule(infos[:1], [AppRequest("t/dev/web", 1, runtime="container")])
    assert "container runtime" in (plan["t/dev/web"][0].message or "")


def test_prefer_no_schedule_is_used_only_when_nothing_else_fits() -> None:
    infos = [NodeInfo("a", avoid=True), NodeInfo("b", memory_bytes=GI)]
    plan = schedule(infos, [AppRequest("t/dev/api", 2, memory_bytes=GI)])
    assert where(plan, "t/dev/api") == ["b", "a"]


def test_same_input_same_output() -> None:
    infos = nodes("c", "a", "b")
    apps = [AppRequest(f"t/dev/app{i}", 2) for i in range(5)]
    assert schedule(infos, apps) == schedule(list(reversed(infos)), list(reversed(apps)))


def test_node_info_reads_node_documents() -> None:
    doc = validate(
        {
            "kind": "Node",
            "metadata": {"name": "n1", "labels": {"disktype": "ssd"}},
            "spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]},
            "status": {
                "phase": "Ready",
                "capacity": {"cpuMillicores": 4000, "memoryBytes": 8 * GI},
                "allocatable": {"cpuMillicores": 3500, "memoryBytes": 7 * GI},
                "capabilities": ["podman"],
            },
        }
    )
    info = node_info(doc)
    assert info.ready and not info.schedulable  # tainted NoSchedule
    assert (info.cpu_millicores, info.memory_bytes) == (3500, 7 * GI)
    assert info.labels == {"disktype": "ssd", "kled.io/hostname": "n1"}  # implicit, as in k8s
    drained = node_info({**doc, "spec": {"unschedulable": True}})
    assert not drained.schedulable
    declared = node_info({"metadata": {"name": "x"}, "spec": {"capacity": {"memory": "1Gi"}}})
    assert declared.memory_bytes == GI and not declared.ready


def test_node_tracker_not_ready_then_lost_then_back() -> None:
    tracker = NodeTracker(not_ready_after=10, reschedule_after=30)
    tracker.start([("a", True), ("b", True)], now=0)
    tracker.heartbeat("b", 9)
    assert tracker.silent(10) == {"a": 10}
    tracker.went_not_ready("a", 10)
    assert tracker.lost(39) == set()
    assert tracker.lost(40) == {"a"}
    tracker.heartbeat("a", 41)
    assert tracker.lost(41) == set() and "a" not in tracker.silent(41)


def test_node_tracker_gives_not_ready_nodes_a_grace_period_after_a_restart() -> None:
    tracker = NodeTracker(not_ready_after=10, reschedule_after=30)
    tracker.start([("a", False)], now=100)
    assert tracker.lost(129) == set() and tracker.lost(130) == {"a"}


def test_heartbeats_fold_into_node_status_in_order() -> None:
    t0 = datetime(2026, 11, 23, tzinfo=UTC)
    hb = NodeHeartbeat(node="a", time=t0, capacity=Capacity(cpu_millicores=2000, memory_bytes=GI))
    status = apply_heartbeat({"mesh": {"acme": {}}}, hb)
    assert status["phase"] == "Ready" and status["mesh"] == {"acme": {}}
    assert status["allocatable"] == {"cpuMillicores": 2000, "memoryBytes": GI}
    assert apply_heartbeat(status, hb) == status
    older = hb.model_copy(update={"time": t0 - timedelta(seconds=5), "agent_version": "old"})
    assert apply_heartbeat(status, older) == status
    down = mark_not_ready(status, 12.0, t0)
    assert down["phase"] == "NotReady"
    assert "no heartbeat for 12s" in down["conditions"][0]["message"]
    assert (
        apply_heartbeat(down, hb.model_copy(update={"time": t0 + timedelta(seconds=20)}))["phase"]
        == "Ready"
    )


def _reference(nodes_: list[NodeInfo], apps: list[AppRequest]) -> dict[str, list[Placement]]:
    """The rules as first written: every replica looks at every node (slow, plain)."""
    from kled.control.scheduling import _Room, admits, keeps, matches, runs, why_pending

    rooms = {n.name: _Room(n) for n in sorted(nodes_, key=lambda n: n.name)}
    plan: dict[str, list[Placement]] = {}
    for app in sorted(apps, key=lambda a: a.key):
        plan[app.key] = []
        for index in app.wanted():
            node = app.current.get(index)
            room = rooms.get(node) if node is not None else None
            if room is not None and keeps(room.info, app):
                room.take(app)
                plan[app.key].append(Placement(index, room.info.name))
    for app in sorted(apps, key=lambda a: a.key):
        placed = {p.index for p in plan[app.key]}
        for index in (i for i in app.wanted() if i not in placed):
            fitting = [
                r
                for r in rooms.values()
                if r.info.ready
                and r.info.schedulable
                and not r.info.lost
                and matches(app.node_selector, r.info.labels)
                and admits(r.info, app)
                and runs(r.info, app.runtime)
                and r.fits_cpu(app)
                and r.fits_memory(app)
                and r.fits_pods()
            ]
            if not fitting:
                why = why_pending(app, [r.info for r in rooms.values()], rooms)
                plan[app.key].append(Placement(index, None, UNSCHEDULABLE, why))
                continue
            best = min(
                fitting, key=lambda r: (r.info.avoid, r.per_app[app.key], r.replicas, r.info.name)
            )
            best.take(app)
            plan[app.key].append(Placement(index, best.info.name))
        plan[app.key].sort(key=lambda p: p.index)
    return plan


def test_the_fast_placement_gives_what_every_replica_looking_at_every_node_gives() -> None:
    rng = random.Random(7)
    for _ in range(300):
        infos = [
            NodeInfo(
                f"n{i}",
                {"zone": rng.choice("ab"), "disk": rng.choice(["ssd", "hdd"])},
                ready=rng.random() > 0.1,
                schedulable=rng.random() > 0.1,
                lost=rng.random() < 0.05,
                cpu_millicores=rng.choice([None, 1000, 4000]),
                memory_bytes=rng.choice([None, GI, 4 * GI]),
                capabilities=frozenset(rng.choice([[], ["podman"], ["netns"]])),
                avoid=rng.random() < 0.2,
                max_pods=rng.choice([2, 5, 110]),
            )
            for i in range(rng.randint(0, 8))
        ]
        apps = [
            AppRequest(
                f"t/dev/a{j}",
                rng.randint(0, 5),
                node_selector=rng.choice([{}, {}, {"zone": "a"}, {"disk": "ssd"}]),
                cpu_millicores=rng.choice([0, 0, 300, 1500]),
                memory_bytes=rng.choice([0, 0, GI // 2, 2 * GI]),
                runtime=rng.choice(["process", "process", "container"]),
                current={k: f"n{rng.randint(0, 9)}" for k in range(rng.randint(0, 3))},
            )
            for j in range(rng.randint(0, 12))
        ]
        assert schedule(infos, apps) == _reference(infos, apps)
