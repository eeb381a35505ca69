"""Small asyncio helpers every layer may use."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True when it is set.

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 that returns normally
    when the event is set in the same moment its task is cancelled, swallowing the
    cancellation, and a loop around it goes on as if nothing had asked it to stop. (The
    agent's workspace loop did: the workers cancelled at shutdown woke it as they ended,
    and ``kled agent`` ran on after SIGTERM until it was killed.)
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
