"""The graceful stop of a replica on a node with the mesh (``Agent._drain``), with a real
process replica and a real preStop hook.

The network is the one part not real here: a stand-in answers ``serving`` (whether the
replica's pod IP is among this host's service backends), which is all the drain asks of
it. Checked: a replica that served gets ``drain_settle`` for the other hosts' gateways
even when this host's gateway dropped it before the drain began (its network arrives with
the same desired state that stops it); one that never got ready is stopped without it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import pytest

from kled.agent.agent import Agent
from kled.agent.runtime.process import ProcessRuntime
from kled.bus.office import ConnectOptions, MessageOffice
from kled.resources.hoststate import Handler, ProbeSpec, ReplicaSpec

SETTLE = 1.0
POD_IP = "100.93.1.10"


class GatewayGone:
    """This host's gateway has already dropped every backend."""

    def serving(self, ip: str | None) -> bool:
        return False


def spec(tmp_path: Path, name: str, **extra: object) -> ReplicaSpec:
    marker = tmp_path / f"prestop-{name}"
    return ReplicaSpec(
        team="acme",
        environment="dev",
        app=name,
        index=0,
        command=[sys.executable, "-c", "import time; time.sleep(300)"],
        pod_ip=POD_IP,
        pre_stop=Handler(kind="exec", command=["sh", "-c", f"date +%s.%N > {marker}"]),
        termination_grace_period_seconds=5,
        **extra,  # type: ignore[arg-type]
    )


class LateNetwork:
    """Dropped at first, then listed again for a moment by a network computed before the
    change (it arrives during the settle), then dropped for good."""

    def __init__(self) -> None:
        self.began = time.monotonic()

    def serving(self, ip: str | None) -> bool:
        return SETTLE * 0.5 < time.monotonic() - self.began < SETTLE * 1.5


async def drained_after(tmp_path: Path, replica: ReplicaSpec, network: object = None) -> float:
    """Seconds from the drain's start to its preStop hook."""
    office = MessageOffice(ConnectOptions(url="nats://127.0.0.1:1"))  # never connected
    rt = ProcessRuntime(tmp_path / "replicas")
    agent = Agent(tmp_path / "agent", office, "node-1", [rt], drain_settle=SETTLE)
    agent.mesh = network or GatewayGone()  # type: ignore[assignment]
    await rt.start(replica)
    try:
        for _ in range(100):
            if (await rt.inspect(replica.id)).state.value == "Running":
                break
            await asyncio.sleep(0.05)
        began = asyncio.get_running_loop().time()
        wall = time.time()
        await agent._drain(rt, replica)
        elapsed = asyncio.get_running_loop().time() - began
        hooked = float((tmp_path / f"prestop-{replica.app}").read_text()) - wall
        assert hooked <= elapsed + 0.5  # the hook ran inside the drain
        return hooked
    finally:
        await rt.stop(replica.id)


async def test_a_replica_that_served_waits_for_the_other_gateways(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kled.agent.agent")
    # no probe: ready as soon as it runs, so a backend until it was planned away
    assert await drained_after(tmp_path, spec(tmp_path, "served")) >= SETTLE
    assert "for the other gateways" in caplog.text


async def test_a_replica_never_ready_is_stopped_without_the_settle(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kled.agent.agent")
    never = ProbeSpec(kind="exec", command=["false"], period_seconds=60)
    await drained_after(tmp_path, spec(tmp_path, "never", readiness_probe=never))
    assert "for the other gateways" not in caplog.text
    assert (tmp_path / "prestop-never").exists()  # the hook still ran


async def test_a_replica_listed_again_during_the_settle_waits_and_settles_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kled.agent.agent")
    replica = spec(tmp_path, "late")
    hooked = await drained_after(tmp_path, replica, LateNetwork())
    # listed until 1.5 settles in, then a whole settle more
    assert hooked >= SETTLE * 2.5
    assert "late.0 left this host's service backends" in caplog.text
    assert "still among" not in caplog.text
