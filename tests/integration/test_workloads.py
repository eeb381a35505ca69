"""The workloads controller on a real store (SQLite) with an in-memory desired-state sink.

Most tests drive the controller one step at a time with a clock they move by hand, so that
"NotReady after missed heartbeats" and "rescheduled after the grace period" are asserted as
states, never as times. One test runs the real background task with short timeouts.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kled.control.desired import RESTARTED_AT
from kled.control.workloads import WorkloadController
from kled.resources.hoststate import (
    AgentEvent,
    Capacity,
    EventType,
    HostDesiredState,
    NodeHeartbeat,
    ReplicaState,
    ReplicaStatus,
    ReplicaStatusReport,
)
from kled.resources.kinds import validate
from kled.store.cipher import SecretCipher
from kled.store.database import Database
from kled.store.objects import Key, Store

GI = 1024**3
T0 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


class Sink:
    """What the Message Office would receive: each node's latest state, and every put."""

    def __init__(self) -> None:
        self.states: dict[str, HostDesiredState] = {}
        self.puts: list[str] = []

    async def put(self, node: str, state: HostDesiredState) -> None:
        self.states[node] = state
        self.puts.append(node)

    def replicas(self, node: str) -> list[str]:
        state = self.states.get(node)
        return [r.id for r in state.replicas] if state else []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def node_doc(name: str, **labels: str) -> dict[str, Any]:
    return validate({"kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": {}})


def app_doc(name: str = "api", **spec: Any) -> dict[str, Any]:
    return validate(
        {
            "kind": "App",
            "metadata": {"name": name, "team": "acme", "environment": "dev"},
            "spec": {"command": ["sleep", "100"], **spec},
        }
    )


def hb(node: str, seconds: float = 0, **kw: Any) -> NodeHeartbeat:
    return NodeHeartbeat(
        node=node,
        time=T0 + timedelta(seconds=seconds),
        capacity=Capacity(cpu_millicores=4000, memory_bytes=8 * GI),
        capabilities=["netns", "podman"],
        agent_version="0.1.0",
        **kw,
    )


def running(app: str, index: int, **kw: Any) -> ReplicaStatus:
    return ReplicaStatus(
        id=f"acme.dev.{app}.{index}", state=ReplicaState.RUNNING, started_at=T0, **kw
    )


class World:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.sink = Sink()
        self.clock = Clock()
        self.hb_time = 0.0
        self.ctl = self.controller()

    def controller(self) -> WorkloadController:
        return WorkloadController(
            self.store, self.sink, not_ready_after=10, reschedule_after=30, clock=self.clock
        )

    async def settle(self) -> None:
        """Let the controller handle every event there is (its own status writes too)."""
        while await self.ctl.step():
            pass
        await self.ctl.tick()
        while await self.ctl.step():
            pass

    async def beat(self, *nodes: str) -> None:
        self.hb_time += 1
        for name in nodes:
            await self.ctl.on_heartbeat(hb(name, self.hb_time))
        await self.settle()

    async def later(self, seconds: float, *alive: str) -> None:
        """Time passes; only the ``alive`` nodes keep heartbeating."""
        step = 5.0
        while seconds > 0:
            self.clock.now += min(step, seconds)
            seconds -= step
            await self.beat(*alive)

    async def app(self, name: str = "api") -> dict[str, Any]:
        return await self.store.get(Key("App", "acme", "dev", name))

    async def status(self, name: str = "api") -> dict[str, Any]:
        return dict((await self.app(name)).get("status") or {})

    async def node_status(self, name: str) -> dict[str, Any]:
        return dict((await self.store.get(Key("Node", "", "", name))).get("status") or {})

    async def change(self, key: Key, edit: Callable[[dict[str, Any]], None]) -> None:
        doc = copy.deepcopy(await self.store.get(key))
        edit(doc)
        await self.store.update(doc)
        await self.settle()

    async def nodes(self, *names: str) -> None:
        for name in names:
            await self.store.create(node_doc(name))
        await self.beat(*names)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    db = await Database.open(f"sqlite:///{tmp_path / 'kled.db'}")
    store = Store(db, SecretCipher.from_data_dir(tmp_path))
    try:
        w = World(store)
        await w.ctl.resync()
        yield w
    finally:
        await w.ctl.stop()
        await db.close()


def nodes_of(status: dict[str, Any]) -> list[str | None]:
    return [r["node"] for r in status["replicas"]]


async def test_heartbeats_make_nodes_ready_with_capacity(world: World) -> None:
    await world.nodes("n1")
    status = await world.node_status("n1")
    assert status["phase"] == "Ready"
    assert status["capacity"] == {"cpuMillicores": 4000, "memoryBytes": 8 * GI}
    assert status["capabilities"] == ["netns", "podman"]
    assert status["agentVersion"] == "0.1.0"
    assert status["conditions"][0]["status"] == "True"
    version = (await world.store.get(Key("Node", "", "", "n1")))["metadata"]["resourceVersion"]
    await world.ctl.on_heartbeat(hb("n1", world.hb_time))  # the same heartbeat again
    await world.ctl.on_heartbeat(hb("n1", 0))  # an old one, late
    after = (await world.store.get(Key("Node", "", "", "n1")))["metadata"]["resourceVersion"]
    assert after == version


async def test_quiet_heartbeats_do_not_rewrite_the_node_every_time(world: World) -> None:
    await world.nodes("n1")
    events_before = await world.store.revision()
    for _ in range(10):  # 10 heartbeats, 1 s apart, with nothing new in them
        world.clock.now += 1
        await world.beat("n1")
    node_events = [e for e in await world.store.events_after(events_before) if e.kind == "Node"]
    assert len(node_events) <= 1  # lastHeartbeat written at most every 15 s
    assert (await world.node_status("n1"))["phase"] == "Ready"
    # Something new in a heartbeat is written at once.
    world.hb_time += 1
    await world.ctl.on_heartbeat(
        hb("n1", world.hb_time).model_copy(update={"agent_version": "0.2.0"})
    )
    assert (await world.node_status("n1"))["agentVersion"] == "0.2.0"
    # And the time, once 15 s have passed.
    world.clock.now += 16
    await world.beat("n1")
    shown = (await world.node_status("n1"))["lastHeartbeat"]
    assert shown.startswith((T0 + timedelta(seconds=world.hb_time)).isoformat()[:19])


async def test_replicas_are_placed_sent_and_reported_running(world: World) -> None:
    await world.nodes("n1", "n2")
    await world.store.create(app_doc(replicas=2, env={"A": "1"}))
    await world.settle()

    status = await world.status()
    assert sorted(nodes_of(status)) == ["n1", "n2"]  # type: ignore[type-var]
    assert status["phase"] == "Pending"
    assert {r["reason"] for r in status["replicas"]} == {"Scheduled"}
    placed = {r["index"]: r["node"] for r in status["replicas"]}
    for index, node in placed.items():
        assert world.sink.replicas(node) == [f"acme.dev.api.{index}"]
    assert world.sink.states[placed[0]].replicas[0].env == {"A": "1"}

    await world.ctl.on_replica_status(
        ReplicaStatusReport(node=placed[0], replica=running("api", 0))
    )
    assert (await world.status())["phase"] == "Degraded"
    report = ReplicaStatusReport(node=placed[1], replica=running("api", 1, restarts=2))
    await world.ctl.on_replica_status(report)
    status = await world.status()
    assert status["phase"] == "Running"
    assert status["readyReplicas"] == 2
    assert status["replicas"][1]["restarts"] == 2

    version = (await world.app())["metadata"]["resourceVersion"]
    await world.ctl.on_replica_status(report)  # redelivered: nothing changes
    await world.settle()
    assert (await world.app())["metadata"]["resourceVersion"] == version


async def test_reports_from_a_node_that_does_not_hold_the_replica_are_ignored(
    world: World,
) -> None:
    await world.nodes("n1", "n2")
    await world.store.create(app_doc(replicas=1))
    await world.settle()
    (home,) = nodes_of(await world.status())
    assert home is not None
    other = "n2" if home == "n1" else "n1"
    await world.ctl.on_replica_status(ReplicaStatusReport(node=other, replica=running("api", 0)))
    assert (await world.status())["phase"] == "Pending"


async def test_unchanged_state_is_not_sent_again(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc())
    await world.settle()
    puts = len(world.sink.puts)
    await world.change(
        Key("App", "acme", "dev", "api"), lambda d: d["metadata"].update(labels={"tier": "x"})
    )
    await world.beat("n1")
    await world.ctl.on_replica_status(ReplicaStatusReport(node="n1", replica=running("api", 0)))
    await world.settle()
    assert len(world.sink.puts) == puts


async def test_no_nodes_and_selector_mismatch_are_explained(world: World) -> None:
    await world.store.create(app_doc(nodeSelector={"disktype": "ssd"}))
    await world.settle()
    (replica,) = (await world.status())["replicas"]
    assert replica["node"] is None and replica["reason"] == "Unschedulable"
    assert replica["message"].startswith("no nodes")

    await world.nodes("n1", "n2")
    (replica,) = (await world.status())["replicas"]
    assert replica["message"] == "0/2 nodes match nodeSelector disktype=ssd"
    events = (await world.status())["events"]
    assert events[-1]["reason"] == "FailedScheduling"

    await world.change(
        Key("Node", "", "", "n2"), lambda d: d["metadata"].update(labels={"disktype": "ssd"})
    )
    status = await world.status()
    assert nodes_of(status) == ["n2"]
    assert world.sink.replicas("n2") == ["acme.dev.api.0"]
    assert status["events"][-1]["reason"] == "Scheduled"


async def test_insufficient_memory_is_explained(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(replicas=3, resources={"memory": "3Gi"}))
    await world.settle()
    status = await world.status()
    assert nodes_of(status) == ["n1", "n1", None]
    assert status["replicas"][2]["message"] == "insufficient memory on 1 node (needs 3Gi)"


async def test_silent_node_goes_not_ready_then_its_replicas_move(world: World) -> None:
    await world.nodes("n1", "n2")
    await world.store.create(app_doc(replicas=1))
    await world.settle()
    (home,) = nodes_of(await world.status())
    assert home is not None
    other = "n2" if home == "n1" else "n1"
    await world.ctl.on_replica_status(ReplicaStatusReport(node=home, replica=running("api", 0)))

    await world.later(12, other)  # past not_ready_after, within the grace period
    node = await world.node_status(home)
    assert node["phase"] == "NotReady"
    assert node["conditions"][0]["reason"] == "HeartbeatMissed"
    status = await world.status()
    assert nodes_of(status) == [home]  # not yet moved
    assert status["replicas"][0]["state"] == "Unknown"
    assert status["phase"] == "Degraded"

    await world.later(35, other)  # past the grace period
    status = await world.status()
    assert nodes_of(status) == [other]
    assert world.sink.replicas(other) == ["acme.dev.api.0"]
    assert world.sink.replicas(home) == []  # told to stop, should it come back
    assert any(e["reason"] == "Rescheduled" for e in status["events"])

    await world.beat(home, other)  # the lost node comes back: nothing moves back
    assert (await world.node_status(home))["phase"] == "Ready"
    assert nodes_of(await world.status()) == [other]


async def test_a_node_back_within_the_grace_period_keeps_its_replicas(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc())
    await world.settle()
    await world.ctl.on_replica_status(ReplicaStatusReport(node="n1", replica=running("api", 0)))
    await world.later(12)
    assert (await world.status())["replicas"][0]["state"] == "Unknown"
    world.hb_time += 1
    await world.ctl.on_heartbeat(hb("n1", world.hb_time, replicas=[running("api", 0)]))
    await world.settle()
    status = await world.status()
    assert (status["phase"], nodes_of(status)) == ("Running", ["n1"])
    assert (await world.node_status("n1"))["phase"] == "Ready"


async def test_bad_env_reference_fails_until_it_exists(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(envFrom=[{"secret": "db"}], env={"B": "explicit"}))
    await world.settle()
    status = await world.status()
    assert status["phase"] == "Failed"
    assert status["replicas"][0]["state"] == "Failed"
    assert status["replicas"][0]["reason"] == "SecretNotFound"
    assert "api" in status["replicas"][0]["message"] and "'db'" in status["message"]
    assert world.sink.replicas("n1") == []  # not sent

    secret = {"kind": "Secret", "metadata": {"name": "db", "team": "acme", "environment": "dev"},
              "stringData": {"PASSWORD": "s3cret", "B": "from-secret"}}  # fmt: skip
    await world.store.create(validate(secret))
    await world.settle()
    status = await world.status()
    assert status["phase"] == "Pending" and "reason" not in status
    assert world.sink.states["n1"].replicas[0].env == {"B": "explicit", "PASSWORD": "s3cret"}


async def test_config_changes_reach_the_node(world: World) -> None:
    await world.nodes("n1")
    cfg = {"kind": "Config", "metadata": {"name": "settings", "team": "acme",
           "environment": "dev"}, "data": {"COLOR": "blue"}}  # fmt: skip
    await world.store.create(validate(cfg))
    # Recreate: the replica restarts in place with the new values (rolling: test_rollout_steps)
    recreate = {"type": "Recreate"}
    await world.store.create(app_doc(envFrom=[{"config": "settings"}], strategy=recreate))
    await world.settle()
    assert world.sink.states["n1"].replicas[0].env == {"COLOR": "blue"}
    await world.change(
        Key("Config", "acme", "dev", "settings"), lambda d: d.update(data={"COLOR": "red"})
    )
    assert world.sink.states["n1"].replicas[0].env == {"COLOR": "red"}


async def test_scale_up_and_down(world: World) -> None:
    await world.nodes("n1", "n2")
    await world.store.create(app_doc(replicas=1))
    await world.settle()
    key = Key("App", "acme", "dev", "api")
    await world.change(key, lambda d: d["spec"].update(replicas=4))
    status = await world.status()
    assert [r["index"] for r in status["replicas"]] == [0, 1, 2, 3]
    placed = nodes_of(status)
    assert placed.count("n1") == 2 and placed.count("n2") == 2
    assert len(world.sink.replicas("n1")) + len(world.sink.replicas("n2")) == 4

    await world.change(key, lambda d: d["spec"].update(replicas=1))
    status = await world.status()
    assert [r["index"] for r in status["replicas"]] == [0]
    assert nodes_of(status) == placed[:1]  # the survivor did not move
    assert world.sink.replicas("n1") + world.sink.replicas("n2") == ["acme.dev.api.0"]

    await world.change(key, lambda d: d["spec"].update(replicas=0))
    assert (await world.status())["phase"] == "Stopped"
    assert world.sink.replicas("n1") + world.sink.replicas("n2") == []


async def test_restart_bumps_the_replica_generation(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(strategy={"type": "Recreate"}))
    await world.settle()
    before = world.sink.states["n1"].replicas[0].generation
    await world.change(
        Key("App", "acme", "dev", "api"),
        lambda d: d["metadata"].update(annotations={RESTARTED_AT: "2026-11-23T02:00:00Z"}),
    )
    after = world.sink.states["n1"].replicas[0].generation
    assert after != before and after > 0


async def test_drain_moves_replicas_off_the_node(world: World) -> None:
    await world.nodes("n1", "n2")
    await world.store.create(app_doc(replicas=2))
    await world.settle()
    await world.change(Key("Node", "", "", "n1"), lambda d: d["spec"].update(unschedulable=True))
    assert nodes_of(await world.status()) == ["n2", "n2"]
    assert world.sink.replicas("n1") == []


async def test_deleting_an_app_empties_its_nodes(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc())
    await world.settle()
    await world.store.delete(Key("App", "acme", "dev", "api"))
    await world.settle()
    assert world.sink.replicas("n1") == []


async def test_agent_events_are_kept_once_and_heartbeat_replicas_count(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc())
    await world.settle()
    ev = AgentEvent(
        node="n1",
        replica_id="acme.dev.api.0",
        type=EventType.WARNING,
        reason="BackOff",
        message="restarting in 2s",
        time=T0,
    )
    await world.ctl.on_event(ev)
    await world.ctl.on_event(ev)
    backoffs = [e for e in (await world.status())["events"] if e["reason"] == "BackOff"]
    assert len(backoffs) == 1 and backoffs[0]["replica"] == 0

    await world.ctl.on_heartbeat(hb("n1", 100, replicas=[running("api", 0)]))
    assert (await world.status())["phase"] == "Running"

    await world.ctl.on_event(AgentEvent(node="n1", reason="Started", message="agent up"))
    assert (await world.node_status("n1"))["events"][-1]["reason"] == "Started"


async def test_a_restarted_controller_keeps_placements(world: World) -> None:
    await world.nodes("n1", "n2")
    await world.store.create(app_doc(replicas=3))
    await world.settle()
    placed = nodes_of(await world.status())
    version = (await world.app())["metadata"]["resourceVersion"]
    world.sink = Sink()
    world.ctl = world.controller()
    await world.ctl.resync()
    await world.settle()
    assert nodes_of(await world.status()) == placed
    assert (await world.app())["metadata"]["resourceVersion"] == version
    assert sorted(world.sink.puts) == ["n1", "n2"]  # each node told its state once


async def test_background_task_marks_a_silent_node_not_ready(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path / 'kled.db'}")
    store = Store(db, SecretCipher.from_data_dir(tmp_path))
    sink = Sink()
    ctl = WorkloadController(store, sink, not_ready_after=0.2, reschedule_after=0.2, tick=0.05)
    try:
        await store.create(node_doc("n1"))
        await ctl.start()
        await ctl.on_heartbeat(hb("n1"))
        await store.create(app_doc())

        async def until(check: Callable[[], Any]) -> None:
            while not await check():
                await asyncio.sleep(0.05)

        async def placed() -> bool:
            return sink.replicas("n1") == ["acme.dev.api.0"]

        async def lost() -> bool:
            doc = await store.get(Key("Node", "", "", "n1"))
            app = await store.get(Key("App", "acme", "dev", "api"))
            replicas = app["status"].get("replicas") or [{}]
            return bool(
                doc["status"].get("phase") == "NotReady"
                and replicas[0].get("node") is None
                and sink.replicas("n1") == []
            )

        await asyncio.wait_for(until(placed), 30)
        await asyncio.wait_for(until(lost), 30)
        app = await store.get(Key("App", "acme", "dev", "api"))
        assert app["status"]["replicas"][0]["message"].startswith("no ready nodes")
    finally:
        await ctl.stop()
        await db.close()


async def test_reports_and_events_delivered_together_write_each_app_once(world: World) -> None:
    """What the Message Office fetched together: one status write per app, in one
    transaction, with what one report and event at a time would have written."""
    await world.nodes("n1")
    for name in ("a", "b", "c"):
        await world.store.create(app_doc(name=name))
    await world.settle()
    before = await world.store.revision()
    reports = [ReplicaStatusReport(node="n1", replica=running(n, 0)) for n in ("a", "b", "c")]
    reports.append(ReplicaStatusReport(node="n2", replica=running("a", 0)))  # not its home
    events = [
        AgentEvent(node="n1", replica_id=f"acme.dev.{n}.0", reason="Started", message="up", time=T0)
        for n in ("a", "b")
    ]
    events.append(AgentEvent(node="n1", reason="Pulled", message="node event", time=T0))
    await world.ctl.on_replica_batch(reports, events)

    assert await world.store.revision() == before + 4  # three apps, and the node's event
    for name in ("a", "b", "c"):
        status = await world.status(name)
        assert status["phase"] == "Running" and status["readyReplicas"] == 1
        started = [e for e in status["events"] if e["reason"] == "Started"]
        assert len(started) == (0 if name == "c" else 1)
    assert (await world.node_status("n1"))["events"][-1]["reason"] == "Pulled"

    await world.ctl.on_replica_batch(reports, events[:2])  # redelivered: nothing changes
    assert await world.store.revision() == before + 4


async def test_heartbeats_delivered_together_fold_their_replicas_once(world: World) -> None:
    """A run of heartbeats fetched together (many agents): each node's newest counts, and
    the replicas they list reach their app in one status write, not one per heartbeat."""
    await world.nodes("n1", "n2", "n3")
    await world.store.create(app_doc(replicas=3))
    await world.settle()
    homes = nodes_of(await world.status())
    assert sorted(h for h in homes if h) == ["n1", "n2", "n3"]
    before = await world.store.revision()
    world.hb_time += 1
    beats = [
        hb(node, world.hb_time, replicas=[running("api", index)])
        for index, node in enumerate(homes)
        if node is not None
    ]
    stale = hb(homes[0] or "", world.hb_time - 5, replicas=[])  # late: says nothing
    await world.ctl.on_heartbeats([*beats, stale])

    status = await world.status()
    assert (status["phase"], status["readyReplicas"]) == ("Running", 3)
    written = [e for e in await world.store.events_after(before) if e.kind == "App"]
    assert len(written) == 1
    for node in ("n1", "n2", "n3"):
        assert (await world.node_status(node))["phase"] == "Ready"
