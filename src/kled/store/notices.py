"""Other replicas' writes, told at once: PostgreSQL LISTEN/NOTIFY on the revision counter.

Every follower of the event log in a replica (the watch cache, watches, controllers)
reads the log when this process writes, or else every second or so: without a notice,
a write made through another replica is seen here up to that long after. A trigger on
the ``revision`` row (every write transaction bumps it) sends ``NOTIFY kled_revision``
at commit, and each replica listens on a connection of its own and wakes its followers,
so that a watch on one replica shows a write made through another within milliseconds.

The trigger is installed by whichever replica starts (idempotently, under a transaction
lock, so that two starting at once do not trip over each other); nothing here is needed
for correctness, only for speed: if the listening connection breaks, followers fall back
on their polling until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "kled_revision"
_INSTALL_LOCK = 7083  # an advisory lock key of its own (ipam uses 7081 and 7082)
_INSTALL = [
    f"SELECT pg_advisory_xact_lock({_INSTALL_LOCK})",
    f"""CREATE OR REPLACE FUNCTION kled_revision_notify() RETURNS trigger AS $$
        BEGIN PERFORM pg_notify('{CHANNEL}', NEW.value::text); RETURN NEW; END
        $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS kled_revision_notify ON revision",
    """CREATE TRIGGER kled_revision_notify AFTER UPDATE ON revision
        FOR EACH ROW EXECUTE FUNCTION kled_revision_notify()""",
]


class RevisionNotices:
    """Listens for other replicas' commits; calls ``wake`` for each batch of them."""

    def __init__(self, url: str, wake: Callable[[], None], retry: float = 1.0) -> None:
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(False)
        self.wake = wake
        self.retry = retry
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        await self._install()
        self._task = asyncio.create_task(self._listen(), name="revision notices")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _connect(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, application_name="kled-notices"
        )

    async def _install(self) -> None:
        try:
            conn = await self._connect()
            async with conn, conn.transaction():
                for statement in _INSTALL:
                    await conn.execute(statement)
        except Exception as e:  # speed only: the followers poll without it
            log.warning("notices: cannot install the revision trigger (%s); polling", e)

    async def _listen(self) -> None:
        while True:
            try:
                conn = await self._connect()
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    self.wake()  # whatever was missed while not listening
                    async for _ in conn.notifies():
                        self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("notices: listening failed (%s); retrying", e)
            self.listening.clear()
            await asyncio.sleep(self.retry)
