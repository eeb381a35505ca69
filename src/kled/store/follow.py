"""Following the event log: every event after a sequence, in order, for as long as it runs.

The feeds that react to changes (intercepts ending with their app, policies re-checked,
a deleted node's credentials withdrawn) all read the log the same way: a batch after the
last sequence seen, each event handed on in order, a wait for the next write when the
batch was not full. A failure to read is retried after a second; a handler that raises
on one event is logged and the next event goes on, so one bad event never wedges a feed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kled.store.objects import Event, Store

log = logging.getLogger(__name__)

BATCH = 500


async def follow_events(
    store: Store,
    after: int,
    handle: Callable[[Event], Awaitable[None]],
    *,
    what: str,
    idle: float = 1.0,
) -> None:
    """Hand each event after ``after`` to ``handle``; runs until cancelled."""
    while True:
        try:
            batch = await store.events_after(after, BATCH)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: reading the event log failed; retrying", what)
            await asyncio.sleep(1)
            continue
        for event in batch:
            after = event.seq
            try:
                await handle(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "%s: %s/%s/%s failed", what, event.kind.lower(), event.team, event.name
                )
        if len(batch) < BATCH:
            await store.wait_for_change(idle)
