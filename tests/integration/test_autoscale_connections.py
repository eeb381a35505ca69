"""Autoscaling on the connections the gateways' routers count, in the workloads controller
on a real store: ``targetRequestsPerSecond``, scale to zero when idle, and the wake-up by a
request held at a gateway. The test plays the agent (heartbeats list the replicas, ready,
and each gateway's counts as the agent reads them from its router); the controller's
clock is moved by hand, so periods and windows are states, not waits.
"""

from __future__ import annotations

from typing import Any

from integration.test_workloads import World, app_doc, hb, running, world
from kled.resources.hoststate import TeamMeshReport

__all__ = ["world"]  # the fixture, shared with test_workloads

PORTS = [{"port": 80, "targetPort": 8080}]


async def report(world: World, connections: int | None, waiting: bool = False) -> None:
    """A heartbeat of node n1: its replicas of ``api``, ready, and its gateway's count."""
    state = world.sink.states["n1"]
    world.hb_time += 1
    mesh = TeamMeshReport(
        public_key="k" * 43 + "=",
        listen_port=51820,
        connections={} if connections is None else {"dev/api": connections},
        waiting=["dev/api"] if waiting else [],
    )
    replicas = [running("api", r.index, ready=True) for r in state.replicas]
    await world.ctl.on_heartbeat(hb("n1", world.hb_time, replicas=replicas, mesh={"acme": mesh}))
    await world.settle()


async def period(world: World, connections: int | None) -> None:
    """One evaluation period (16 s of the controller's clock)."""
    world.clock.now += 16
    await report(world, connections)
    await world.ctl.tick()
    await world.settle()


def count(world: World) -> int:
    return len(world.sink.states["n1"].replicas)


async def rescales(world: World) -> list[str]:
    status: dict[str, Any] = await world.status()
    return [e["message"] for e in status["events"] if e["reason"] == "SuccessfulRescale"]


async def test_connections_per_second_scale_up_and_back_down(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(
        ports=PORTS, resources={"cpu": "100m"},
        autoscale={"minReplicas": 1, "maxReplicas": 4, "targetRequestsPerSecond": 10,
                   "scaleDownStabilizationSeconds": 0},
    ))  # fmt: skip
    await world.settle()
    await report(world, 100)  # the baseline: no rate yet
    await period(world, 100)
    assert count(world) == 1
    await period(world, 100 + 16 * 25)  # 25 new connections/s against 10 per replica
    assert count(world) == 3
    status = await world.status()
    assert status["autoscale"]["currentRequestsPerSecond"] == 25.0
    assert status["autoscale"]["targetRequestsPerSecond"] == 10
    assert (await rescales(world))[-1] == (
        "new size 3 (was 1): 25.0 new connections/s, above the target 10/s per replica"
    )
    await period(world, 500 + 16 * 30)  # 30/s for 3 replicas: on target, no change
    assert count(world) == 3
    await period(world, 3)  # the router started again (a smaller count): 3 new ones
    assert count(world) == 1
    assert (await rescales(world))[-1].startswith("new size 1 (was 3): 0.2 new connections/s")


async def test_an_idle_app_goes_to_zero_and_a_held_request_wakes_it(world: World) -> None:
    await world.nodes("n1")
    await world.store.create(app_doc(
        ports=PORTS, resources={"cpu": "100m"},
        autoscale={"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": 30},
    ))  # fmt: skip
    await world.settle()
    await report(world, 7)
    await period(world, 8)  # a new connection: awake
    assert count(world) == 1
    await period(world, 8)  # 16 s quiet, under the 30 s window
    assert count(world) == 1
    await period(world, 8)  # 32 s quiet
    assert count(world) == 0
    assert (await rescales(world))[-1] == (
        "new size 0 (was 1): no new connection for 30s (scaleToZeroAfterSeconds)"
    )
    await period(world, None)  # nothing asked for: stays at zero
    assert count(world) == 0
    await report(world, 9, waiting=True)  # held at the gateway: woken without a period
    assert count(world) == 1
    status = await world.status()
    assert status["autoscale"]["desiredReplicas"] == 1
    assert (await rescales(world))[-1] == "new size 1 (was 0): a request is waiting at a gateway"
