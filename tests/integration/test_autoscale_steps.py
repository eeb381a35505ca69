"""Autoscaling in the workloads controller, on a real store, usage sent as the agents do.

The test plays the agent: heartbeats list the app's replicas, ready, with the CPU each
uses. The controller's clock is moved by hand, so the evaluation period and the
stabilisation window are states here, not waits.
"""

from __future__ import annotations

from typing import Any

from integration.test_workloads import World, app_doc, hb, running, world
from kled.resources.hoststate import ReplicaUsage

__all__ = ["world"]  # the fixture, shared with test_workloads

SPEC: dict[str, Any] = {
    "replicas": 1,
    "resources": {"cpu": "200m"},
    "autoscale": {"minReplicas": 1, "maxReplicas": 4, "targetCPUUtilizationPercentage": 50,
                  "scaleDownStabilizationSeconds": 60},
}  # fmt: skip


async def report(world: World, millicores: int) -> None:
    """A heartbeat: every replica the node runs, ready, each using ``millicores``."""
    state = world.sink.states["n1"]
    ids = [r.index for r in state.replicas]
    world.hb_time += 1
    usage = {
        f"acme.dev.api.{i}": ReplicaUsage(cpu_seconds=1.0, cpu_millicores=millicores,
                                          memory_bytes=1 << 20)
        for i in ids
    }  # fmt: skip
    replicas = [running("api", i, ready=True) for i in ids]
    await world.ctl.on_heartbeat(hb("n1", world.hb_time, replicas=replicas, usage=usage))
    await world.settle()


async def period(world: World, millicores: int) -> None:
    """One evaluation period (16 s of the controller's clock) ending with a heartbeat
    that reports ``millicores`` per replica."""
    world.clock.now += 16
    await report(world, millicores)
    await world.ctl.tick()
    await world.settle()


def count(world: World) -> int:
    return len(world.sink.states["n1"].replicas)


async def test_scales_up_under_load_and_back_down_after_the_window(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(**SPEC))
    await world.settle()
    assert count(world) == 1

    await period(world, 200)  # 100 % of the request against a 50 % target
    assert count(world) == 2
    status = await world.status()
    assert status["autoscale"]["desiredReplicas"] == 2
    assert status["autoscale"]["currentCPUUtilizationPercentage"] == 100
    assert any(e["reason"] == "SuccessfulRescale" for e in status["events"])

    await period(world, 100)  # 50 %: on target, nothing changes
    assert count(world) == 2

    # 5 %: the recommendation is 1, held by the 60 s window of the earlier 2s.
    for _ in range(3):
        await period(world, 10)
        assert count(world) == 2
    for _ in range(3):
        await period(world, 10)
    assert count(world) == 1
    status = await world.status()
    assert status["autoscale"]["desiredReplicas"] == 1
    assert "new size 1 (was 2)" in status["events"][-1]["message"]


async def test_without_autoscale_the_status_says_nothing_of_it(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(replicas=2))
    await world.settle()
    await period(world, 500)
    assert "autoscale" not in await world.status()
    assert count(world) == 2
