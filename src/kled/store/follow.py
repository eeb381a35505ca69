"""Following the event log: every event after a sequence, in order, for as long as it runs.

The feeds that react to changes (intercepts ending with their app, policies re-checked,
a deleted node's credentials withdrawn) all read the log the same way: a batch after the
last sequence seen, each event handed on in order, a wait for the next write when the
batch was not full. A failure to read is retried after a second; a handler that raises
on one event is logged and the next event goes on, so one bad event never wedges a feed.

A feed that falls so far behind that its next events were compacted (``Gone``) calls its
``resync``, which rebuilds what it keeps from the store as it is now and says the
revision to go on from, as a Kubernetes informer lists again after a 410. A feed without
one goes on from the oldest event kept, with an error in the log naming what it missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kled.errors import Gone
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
    resync: Callable[[], Awaitable[int]] | None = None,
) -> None:
    """Hand each event after ``after`` to ``handle``; runs until cancelled."""
    while True:
        try:
            batch = await store.events_after(after, BATCH)
        except asyncio.CancelledError:
            raise
        except Gone as gone:
            if resync is not None:
                log.warning("%s: events after %d were compacted; listing again", what, after)
                after = await _resynced(resync, what)
            else:
                log.error(
                    "%s: events %d to %d were compacted before this feed read them",
                    what,
                    after + 1,
                    gone.oldest - 1,
                )
                after = gone.oldest - 1
            continue
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


async def _resynced(resync: Callable[[], Awaitable[int]], what: str) -> int:
    while True:
        try:
            return await resync()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: listing again failed; retrying", what)
            await asyncio.sleep(1)
