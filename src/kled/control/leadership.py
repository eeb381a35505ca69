"""Running the controllers on one replica: campaign for the lease, start on winning.

A replica that does not hold the controllers' lease (``store/lease.py``) serves the API
and asks for the lease every ``poll`` seconds; the one that wins starts the controllers
and checks every ``poll`` seconds that it still holds it. A holder that loses the lease
(its database connection broke, so the lock may be another replica's by now) does not
try to wind its controllers down in place: ``on_lost`` is called, and the control plane
stops, as Kubernetes' controller manager does, to be started again by its supervisor with
no state left over from its time as leader. A leader whose controllers fail to start
gives the lease up and stops the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from kled.store.lease import Lease

log = logging.getLogger(__name__)

#: how often a replica asks for the lease, and a holder checks it still holds it
POLL_SECONDS = 1.0


class Leadership:
    """Wins the lease, then runs ``start``; calls ``on_lost(why)`` if the lease is lost."""

    def __init__(
        self,
        lease: Lease,
        start: Callable[[], Awaitable[None]],
        on_lost: Callable[[str], None],
        *,
        poll: float = POLL_SECONDS,
    ) -> None:
        self.lease = lease
        self._start = start
        self._on_lost = on_lost
        self.poll = poll
        self.leader = False
        #: set once the controllers started here, or this replica found them elsewhere
        self.settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def begin(self, *, wait: bool = True) -> None:
        """Ask once, then keep on asking, or checking, in the background. When the lease
        is ours, the controllers start now (``wait``) or in the background, so that the
        API serves while they catch up with a large store."""
        if not await self.lease.try_acquire():
            log.info("controllers: another replica holds the lease; serving the API only")
            self.settled.set()
        elif wait:
            await self._lead()
        else:
            self._task = asyncio.create_task(self._run(first=True), name="leadership")
            return
        self._task = asyncio.create_task(self._run(), name="leadership")

    async def _lead(self) -> None:
        self.leader = True
        log.info("controllers: this replica holds the lease; starting them")
        try:
            await self._start()
        finally:
            self.settled.set()

    async def _run(self, first: bool = False) -> None:
        while True:
            try:
                if first:
                    first = False
                    await self._lead()
                await asyncio.sleep(self.poll)
                if self.leader:
                    if not await self.lease.check():
                        self.leader = False
                        self._on_lost("it lost the controllers' lease (its database broke)")
                        return
                elif await self.lease.try_acquire():
                    await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # the controllers failed to start: let another replica have a go
                log.exception("controllers: starting them failed; giving the lease up")
                self.leader = False
                await self.lease.release()
                self._on_lost(f"its controllers failed to start: {e}")
                return

    async def halt(self) -> None:
        """Ask and check no more (and stop starting the controllers, if under way)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def close(self) -> None:
        """Give the lease up: call once the controllers are stopped."""
        await self.halt()
        await self.lease.release()
        self.leader = False
