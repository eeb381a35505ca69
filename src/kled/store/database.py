"""The database seam: one async engine for SQLite (WAL) or PostgreSQL, and migrations.

``--database`` takes an ordinary URL (``sqlite:///path/kled.db``,
``postgresql://user@host/db``); this module picks the async driver, turns on WAL and a busy
timeout for SQLite, runs Alembic migrations at start, and translates driver errors into
``kled.errors``. Every write goes through ``Database.write()``: one transaction that first
takes the next revision from the ``revision`` row — which also serialises writers, so
the event log's sequence is gap-free and becomes visible in order.

A SQLite database holds every team's documents (Secrets encrypted, the rest in clear), so
its files are the server's alone: created 0600 (SQLite gives its ``-wal`` and ``-shm``
files the mode of the database file), and those an older version left readable are made
0600 at every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, select, text, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from kled.errors import Unavailable
from kled.store.schema import revision

MIGRATIONS = Path(__file__).parent / "migrations"
#: built once: every write transaction starts with it
_NEXT_REVISION = (
    update(revision)
    .where(revision.c.id == 1)
    .values(value=revision.c.value + 1)
    .returning(revision.c.value)
)


def async_url(url: str) -> str:
    """The SQLAlchemy async URL for an ordinary database URL."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return str(parsed.set(drivername="sqlite+aiosqlite"))
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise Unavailable(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


class Database:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # SQLite has one writer at a time; queueing writers here avoids busy retries.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        #: told of every write transaction's end: its revision, and whether it committed
        self.after_write: Callable[[int, bool], None] | None = None

    @classmethod
    async def open(cls, url: str) -> Database:
        kwargs: dict[str, Any] = {}
        sqlite_file: Path | None = None
        if make_url(url).get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
            sqlite_file = _sqlite_file(url)
            if sqlite_file is not None:
                _private_sqlite_files(sqlite_file, create=True)
        else:
            kwargs.update(pool_size=20, max_overflow=10, pool_pre_ping=True)
        engine = create_async_engine(async_url(url), **kwargs)
        if engine.dialect.name == "sqlite":
            _tune_sqlite(engine)
        db = cls(engine)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_migrate)
        except (OperationalError, DBAPIError, OSError) as e:
            await engine.dispose()
            raise Unavailable(f"cannot open database {make_url(url)!r}: {e}") from e
        if sqlite_file is not None:
            _private_sqlite_files(sqlite_file, create=False)  # the -wal and -shm just made
        return db

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError) as e:
            raise Unavailable(f"database: {e.orig or e}") from e

    @asynccontextmanager
    async def write(self) -> AsyncIterator[tuple[AsyncConnection, int]]:
        """A transaction and the revision it owns; everything commits or nothing does."""
        if self._write_lock is not None:
            async with self._write_lock, self._transaction() as tx:
                yield tx
        else:
            async with self._transaction() as tx:
                yield tx

    @asynccontextmanager
    async def write_batch(self) -> AsyncIterator[Revisions]:
        """One transaction for several writes, each with a revision of its own
        (``Revisions.take``), all committed together: one commit and one turn of the
        write lock instead of one each. A batch that took no revision writes nothing."""
        lock = self._write_lock or contextlib.nullcontext()
        revs: Revisions | None = None
        committed = False
        try:
            async with lock:
                try:
                    async with self.engine.begin() as conn:
                        first = int((await conn.execute(_NEXT_REVISION)).scalar_one())
                        revs = Revisions(conn, first)
                        yield revs
                        if not revs.used:
                            raise _NothingWritten
                    committed = True
                except _NothingWritten:
                    pass
        except OperationalError as e:
            raise Unavailable(f"database: {e.orig or e}") from e
        finally:
            if revs is not None and self.after_write is not None:
                for rev in revs.taken:
                    self.after_write(rev, committed)

    @asynccontextmanager
    async def maintain(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that takes no revision (housekeeping: compacting the event log)."""
        lock = self._write_lock or contextlib.nullcontext()
        try:
            async with lock, self.engine.begin() as conn:
                yield conn
        except (OperationalError, DBAPIError) as e:
            raise Unavailable(f"database: {e.orig or e}") from e

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[tuple[AsyncConnection, int]]:
        taken: int | None = None
        committed = False
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(_NEXT_REVISION)
                taken = int(result.scalar_one())
                yield conn, taken
            committed = True
        except OperationalError as e:
            raise Unavailable(f"database: {e.orig or e}") from e
        finally:
            if taken is not None and self.after_write is not None:
                self.after_write(taken, committed)

    async def current_revision(self) -> int:
        async with self.read() as conn:
            value = (await conn.execute(select(revision.c.value))).scalar_one()
            return int(value)


class _NothingWritten(Exception):
    """A batch that wrote nothing: its one revision is rolled back."""


class Revisions:
    """The revisions of one batch transaction, taken one per write, in order."""

    def __init__(self, conn: AsyncConnection, first: int) -> None:
        self.conn = conn
        #: every revision the transaction holds (the first is taken as it begins)
        self.taken = [first]
        #: how many of them a write took
        self.used = 0

    async def take(self) -> int:
        """The next revision, for one write (an event) of this transaction."""
        if self.used == len(self.taken):
            self.taken.append(int((await self.conn.execute(_NEXT_REVISION)).scalar_one()))
        self.used += 1
        return self.taken[self.used - 1]


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database."""
    name = make_url(url).database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


def _private_sqlite_files(path: Path, *, create: bool) -> None:
    """Make the database file (created 0600 if ``create``) and its companions 0600."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            companion = path.with_name(path.name + suffix)
            if companion.stat().st_mode & 0o777 != 0o600:
                os.chmod(companion, 0o600)


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, say when a transaction begins (see _on_begin).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Every write transaction starts by writing the revision row, so a deferred BEGIN
        # never upgrades a read lock (the case where SQLite gives up without waiting).
        conn.exec_driver_sql("BEGIN")


def _migrate(conn: Connection) -> None:
    cfg = AlembicConfig(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    if conn.dialect.name == "postgresql":
        # Two replicas starting at once on one database must not migrate twice.
        conn.execute(text("SELECT pg_advisory_xact_lock(7080)"))
    command.upgrade(cfg, "head")
