"""Rolling updates in the workloads controller, on a real store, reports sent by hand.

The agents are played by the test: it reports replicas Running and ready, and reads what
each node was told to run from the sink. Each step is a state (which replicas of which
revision a node runs, what ``status.rollout`` says), never a time.
"""

from __future__ import annotations

import asyncio
from typing import Any

from integration.test_workloads import World, app_doc, running, world
from kled.resources.hoststate import ReplicaStatusReport
from kled.resources.kinds import validate
from kled.store.objects import Key

__all__ = ["world"]  # the fixture, shared with test_workloads

KEY = Key("App", "acme", "dev", "api")


def told(world: World) -> dict[int, str]:
    """index → the COLOR env the node was told to run it with."""
    state = world.sink.states["n1"]
    return {r.index: r.env.get("COLOR", "") for r in state.replicas}


async def ready(world: World, *indexes: int) -> None:
    for index in indexes:
        report = ReplicaStatusReport(node="n1", replica=running("api", index, ready=True))
        await world.ctl.on_replica_status(report)
    await world.settle()


def color(value: str) -> Any:
    def edit(d: dict[str, Any]) -> None:
        d["spec"]["env"] = {"COLOR": value}

    return edit


async def test_a_rolling_update_adds_one_waits_for_ready_then_removes_one(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(replicas=3, env={"COLOR": "blue"}))
    await world.settle()
    await ready(world, 0, 1, 2)
    status = await world.status()
    assert status["rollout"]["phase"] == "Complete" and status["rollout"]["revision"] == 1

    await world.change(KEY, color("red"))
    # Defaults for 3 replicas: maxSurge 25% → 1, maxUnavailable 25% → 0.
    assert told(world) == {0: "blue", 1: "blue", 2: "blue", 3: "red"}
    status = await world.status()
    assert status["rollout"]["phase"] == "Progressing" and status["rollout"]["revision"] == 2
    assert [r["revision"] == status["revisions"][-1]["hash"] for r in status["replicas"]] == [
        False, False, False, True]  # fmt: skip

    await ready(world, 3)  # the new one is ready: one old one goes, one new one comes
    assert sorted(told(world).values()) == ["blue", "blue", "red", "red"]
    assert 3 in told(world) and 4 in told(world)
    await ready(world, 4)
    await ready(world, 5)
    assert told(world) == {3: "red", 4: "red", 5: "red"}
    status = await world.status()
    assert status["rollout"]["phase"] == "Complete"
    assert [e["revision"] for e in status["revisions"]] == [1, 2]
    reasons = [e["reason"] for e in status["events"]]
    assert "RolloutStarted" in reasons and "RolloutComplete" in reasons


async def test_recreate_replaces_every_replica_at_once(world: World) -> None:
    await world.nodes("n1")
    doc = app_doc(replicas=2, env={"COLOR": "blue"}, strategy={"type": "Recreate"})
    await world.store.create(doc)
    await world.settle()
    await world.change(KEY, color("red"))
    assert told(world) == {0: "red", 1: "red"}


async def test_max_unavailable_lets_old_replicas_go_before_new_ones_are_ready(
    world: World,
) -> None:
    await world.nodes("n1")
    strategy = {"maxSurge": 0, "maxUnavailable": 1}
    await world.store.create(app_doc(replicas=3, env={"COLOR": "blue"}, strategy=strategy))
    await world.settle()
    await ready(world, 0, 1, 2)
    await world.change(KEY, color("red"))
    # No surge: one old replica goes first, and its place is taken by a new one.
    assert sorted(told(world).values()) == ["blue", "blue", "red"]
    assert len(told(world)) == 3


async def test_a_stalled_rollout_keeps_the_old_replicas_and_undo_restores(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(replicas=2, env={"COLOR": "blue"}, progressDeadlineSeconds=1))
    await world.settle()
    await ready(world, 0, 1)
    await world.change(KEY, color("red"))
    assert told(world) == {0: "blue", 1: "blue", 2: "red"}

    # The new replica never gets ready; the deadline is a second of wall time, and the
    # controller's tick notices it (waited for as a state, whatever the machine's speed).
    for _ in range(200):
        if (await world.status())["rollout"]["phase"] == "Stalled":
            break
        await world.ctl.tick()
        await world.settle()
        await asyncio.sleep(0.05)
    status = await world.status()
    assert status["rollout"]["phase"] == "Stalled", status["rollout"]
    assert status["rollout"]["reason"] == "ProgressDeadlineExceeded"
    assert any(e["reason"] == "ProgressDeadlineExceeded" for e in status["events"])
    assert told(world) == {0: "blue", 1: "blue", 2: "red"}  # the old ones still run
    assert status["readyReplicas"] == 2

    # Undo: the spec of revision 1 again, which becomes revision 3; the new replica goes.
    await world.change(KEY, color("blue"))
    assert told(world) == {0: "blue", 1: "blue"}
    status = await world.status()
    assert status["rollout"]["phase"] == "Complete"
    assert [e["revision"] for e in status["revisions"]] == [2, 3]


async def test_a_paused_app_rolls_nothing_until_resumed(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(replicas=1, env={"COLOR": "blue"}, paused=True))
    await world.settle()
    await ready(world, 0)
    await world.change(KEY, color("red"))
    assert told(world) == {0: "blue"}
    assert (await world.status())["rollout"]["phase"] == "Paused"
    await world.change(KEY, lambda d: d["spec"].update(paused=False))
    assert told(world) == {0: "blue", 1: "red"}


async def test_a_config_change_rolls_and_old_replicas_keep_their_values(world: World) -> None:
    await world.nodes("n1")
    cfg = {"kind": "Config", "metadata": {"name": "settings", "team": "acme",
           "environment": "dev"}, "data": {"COLOR": "blue"}}  # fmt: skip
    await world.store.create(validate(cfg))
    await world.store.create(app_doc(envFrom=[{"config": "settings"}]))
    await world.settle()
    await ready(world, 0)
    await world.change(
        Key("Config", "acme", "dev", "settings"), lambda d: d.update(data={"COLOR": "red"})
    )
    assert told(world) == {0: "blue", 1: "red"}
    await ready(world, 1)
    assert told(world) == {1: "red"}


async def test_a_restarted_controller_continues_the_rollout_where_it_was(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(replicas=2, env={"COLOR": "blue"}))
    await world.settle()
    await ready(world, 0, 1)
    await world.change(KEY, color("red"))
    assert told(world) == {0: "blue", 1: "blue", 2: "red"}

    # A new controller (the control plane restarted): it reads the revisions back from
    # the status and sends the same thing; no replica is added or restarted twice.
    world.ctl = world.controller()
    await world.ctl.resync()
    await world.settle()
    assert told(world) == {0: "blue", 1: "blue", 2: "red"}
    await ready(world, 2)
    await ready(world, 3)
    assert told(world) == {2: "red", 3: "red"}
    assert (await world.status())["rollout"]["phase"] == "Complete"


async def test_a_node_lost_mid_rollout_has_its_replicas_replaced_and_the_rollout_ends(
    world: World,
) -> None:
    await world.nodes("n1", "n2")
    await world.store.create(app_doc(replicas=2, env={"COLOR": "blue"}))
    await world.settle()
    homes = {r["index"]: r["node"] for r in (await world.status())["replicas"]}
    for index, node in homes.items():
        report = ReplicaStatusReport(node=node, replica=running("api", index, ready=True))
        await world.ctl.on_replica_status(report)
    await world.settle()
    await world.change(KEY, color("red"))
    status = await world.status()
    new = [r for r in status["replicas"] if r["index"] == 2]
    assert len(new) == 1 and new[0]["node"] is not None

    # The new replica's node is lost; past the grace period its replicas move to the other.
    lost = new[0]["node"]
    other = "n2" if lost == "n1" else "n1"
    await world.later(45, other)
    status = await world.status()
    assert all(r["node"] == other for r in status["replicas"])
    # Every replica there reports ready in turn, until the rollout is over.
    for _ in range(6):
        status = await world.status()
        if status["rollout"]["phase"] == "Complete":
            break
        for r in status["replicas"]:
            report = ReplicaStatusReport(node=other, replica=running("api", r["index"], ready=True))
            await world.ctl.on_replica_status(report)
        await world.settle()
    status = await world.status()
    assert status["rollout"]["phase"] == "Complete", status["rollout"]
    assert len(status["replicas"]) == 2
    assert {r["revision"] for r in status["replicas"]} == {status["revisions"][-1]["hash"]}


async def test_an_app_whose_secret_comes_later_starts_without_a_rollout(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(replicas=2, envFrom=[{"secret": "db"}]))
    await world.settle()
    assert (await world.status())["phase"] == "Failed"
    secret = {"kind": "Secret", "metadata": {"name": "db", "team": "acme", "environment": "dev"},
              "stringData": {"COLOR": "green"}}  # fmt: skip
    await world.store.create(validate(secret))
    await world.settle()
    assert told(world) == {0: "green", 1: "green"}
    status = await world.status()
    assert [e["revision"] for e in status["revisions"]] == [1]
    assert {r["revision"] for r in status["replicas"]} == {status["revisions"][0]["hash"]}
