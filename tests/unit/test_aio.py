"""``kled.aio.wait_event``: a loop woken and cancelled in the same moment stops.

On Python 3.11, ``asyncio.wait_for(event.wait(), t)`` returns normally when the event is
set as its task is cancelled: the cancellation is lost and a ``while True`` loop around
it runs on (``kled agent`` ignored SIGTERM this way while its workspaces shut down).
"""

from __future__ import annotations

import asyncio

from kled.aio import wait_event


async def _loop(event: asyncio.Event, woken: list[int]) -> None:
    while True:
        await wait_event(event, 10)
        event.clear()
        woken.append(1)


async def test_a_loop_woken_as_it_is_cancelled_stops() -> None:
    event, woken = asyncio.Event(), []
    task = asyncio.create_task(_loop(event, woken))
    await asyncio.sleep(0.01)  # the loop waits for its event
    event.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert task in done and task.cancelled()
    assert woken == []


async def test_it_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True
    assert await wait_event(event, 0) is True  # already set: no wait at all
