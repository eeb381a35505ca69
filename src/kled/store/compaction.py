"""Compacting the event log: only the last ``keep_events`` events stay.

Every write adds an event, so a long-lived control plane's log grows without end (a
heartbeat every few seconds per node is a million events a month). Watchers need only the
recent ones: a watch that starts from a revision older than the oldest kept gets ``410
Gone`` naming that revision (``Store.events_after``), lists again and resumes from the
list's revision, as Kubernetes clients do after etcd compacts. Compaction runs on every
replica; deleting what another replica already deleted costs nothing.
"""

from __future__ import annotations

import asyncio
import logging

from kled.store.objects import Store

log = logging.getLogger(__name__)


class Compactor:
    """Deletes all but the last ``keep`` events every ``every`` seconds, until stopped."""

    def __init__(self, store: Store, keep: int, every: float) -> None:
        self.store = store
        self.keep = keep
        self.every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event log compaction")

    async def stop(self) -> None:
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()  # again if a cancel was lost meeting a wake-up
            await asyncio.wait([task], timeout=0.5)

    async def _run(self) -> None:
        while True:
            try:
                gone = await self.store.compact(self.keep)
                if gone:
                    log.info("event log: %d events compacted, %d kept", gone, self.keep)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event log: compaction failed; trying again later")
            await asyncio.sleep(self.every)
