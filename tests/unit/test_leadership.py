"""The controllers' campaign as a state machine, over a lease held in memory."""

from __future__ import annotations

import asyncio

import pytest

from kled.control.leadership import Leadership


class HeldLease:
    """A lease whose holder the test decides."""

    def __init__(self, free: bool) -> None:
        self.free = free
        self.ours = False
        self.broken = False
        self.released = 0

    async def try_acquire(self) -> bool:
        if self.free:
            self.free, self.ours = False, True
        return self.ours

    async def check(self) -> bool:
        return self.ours and not self.broken

    async def release(self) -> None:
        self.released += 1
        self.ours = False


class Controllers:
    def __init__(self, fail: bool = False) -> None:
        self.starts = 0
        self.fail = fail
        self.lost: list[str] = []

    async def start(self) -> None:
        self.starts += 1
        if self.fail:
            raise RuntimeError("no database")

    def on_lost(self, why: str) -> None:
        self.lost.append(why)


async def until(condition: object) -> None:
    async with asyncio.timeout(30):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("wait", [True, False])
async def test_a_free_lease_starts_the_controllers_once(wait: bool) -> None:
    lease, ctl = HeldLease(free=True), Controllers()
    leading = Leadership(lease, ctl.start, ctl.on_lost, poll=0.01)
    await leading.begin(wait=wait)
    await leading.settled.wait()
    await asyncio.sleep(0.05)  # more polls: still held, not started again
    assert leading.leader and ctl.starts == 1 and ctl.lost == []
    await leading.close()
    assert lease.released == 1 and not leading.leader


async def test_a_replica_waits_for_the_lease_then_starts_them() -> None:
    lease, ctl = HeldLease(free=False), Controllers()
    leading = Leadership(lease, ctl.start, ctl.on_lost, poll=0.01)
    await leading.begin()
    assert leading.settled.is_set() and not leading.leader and ctl.starts == 0
    lease.free = True  # the holder died
    await until(lambda: ctl.starts == 1)
    assert leading.leader
    await leading.close()


async def test_a_holder_that_loses_the_lease_stops_and_says_why() -> None:
    lease, ctl = HeldLease(free=True), Controllers()
    leading = Leadership(lease, ctl.start, ctl.on_lost, poll=0.01)
    await leading.begin()
    lease.broken = True
    await until(lambda: ctl.lost)
    assert not leading.leader
    assert "lost the controllers' lease" in ctl.lost[0]
    await leading.close()


@pytest.mark.parametrize("wait", [True, False])
async def test_controllers_failing_to_start_give_the_lease_up(wait: bool) -> None:
    lease, ctl = HeldLease(free=True), Controllers(fail=True)
    leading = Leadership(lease, ctl.start, ctl.on_lost, poll=0.01)
    if wait:
        with pytest.raises(RuntimeError):
            await leading.begin(wait=True)
        return  # the caller (open) fails, and the server does not start
    await leading.begin(wait=False)
    await until(lambda: ctl.lost)
    assert "failed to start: no database" in ctl.lost[0]
    assert lease.released == 1 and leading.settled.is_set() and not leading.leader
    await leading.close()
