"""The controllers' lease: which control-plane replica runs the controllers right now.

Every replica serves the API; the controllers (workloads, mesh and IPAM, peers, policy
audit, GitOps, dev sessions, managed services, compaction) must run on exactly one of them,
or two schedulers would place one replica twice. The lease is the database's: on
PostgreSQL, a session-level advisory lock held on a connection of its own, so that the
lock lives exactly as long as the holder's connection. A holder killed with ``kill -9``
loses its socket at once, PostgreSQL ends its session and frees the lock, and the next
replica to ask (every ``poll`` seconds) gets it. A holder that can no longer reach the
database is told the lease is lost (its check fails) and must stop its controllers: the
lock may already be another replica's.

On SQLite there is one replica (one process owns the file's writes), so the lease is
held from the start and never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from typing import Any, Protocol

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

#: the advisory lock's key: one lock for every controller of the control plane
LEASE_KEY = zlib.crc32(b"kled controllers") - (1 << 31)


class Lease(Protocol):
    """A lease one replica at a time holds."""

    async def try_acquire(self) -> bool:
        """Take the lease if it is free; True when this replica holds it now."""
        ...

    async def check(self) -> bool:
        """Whether this replica still holds the lease (False: stop the controllers)."""
        ...

    async def release(self) -> None: ...


class SoleLease:
    """The lease of a database only one replica uses (SQLite): always held."""

    async def try_acquire(self) -> bool:
        return True

    async def check(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class AdvisoryLease:
    """A PostgreSQL session-level advisory lock on a connection of its own."""

    def __init__(self, url: str, key: int = LEASE_KEY, timeout: float = 3.0) -> None:
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(False)
        self.key = key
        self.timeout = timeout
        self._conn: Any = None
        self.held = False

    async def _connect(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            # Keepalives: a holder cut off from the database learns it within seconds
            # instead of the kernel's two hours, and stops its controllers.
            self._conn = await psycopg.AsyncConnection.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=max(1, int(self.timeout)),
                keepalives=1,
                keepalives_idle=2,
                keepalives_interval=1,
                keepalives_count=2,
                application_name="kled-lease",
            )
        return self._conn

    async def try_acquire(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._connect()
                cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
                row = await cursor.fetchone()
        except Exception as e:  # the database is away: not held, ask again later
            log.debug("lease: cannot ask the database (%s)", e)
            await self._drop()
            return False
        self.held = bool(row and row[0])
        return self.held

    async def check(self) -> bool:
        if not self.held:
            return False
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._connect()
                await conn.execute("SELECT 1")
        except Exception as e:
            log.warning("lease: lost the database connection that holds it (%s)", e)
            await self._drop()
            return False
        return True

    async def release(self) -> None:
        if self._conn is not None and self.held and not self._conn.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        await self._drop()

    async def _drop(self) -> None:
        self.held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


def lease_for(url: str) -> Lease:
    """The lease of the database at ``url``."""
    if make_url(url).get_backend_name() == "sqlite":
        return SoleLease()
    return AdvisoryLease(url)
