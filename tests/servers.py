"""Real servers for tests: the control plane in a thread, databases on both backends."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from kled.api.server import ControlPlane
from kled.bus.embedded import EmbeddedNats
from kled.bus.office import ConnectOptions, MessageOffice
from kled.settings import ServerSettings

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_available() -> str | None:
    """None if the PostgreSQL at 127.0.0.1:5432 answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as e:  # any failure means: not reachable here
        return f"no PostgreSQL at 127.0.0.1:5432 ({e.__class__.__name__}: {e})"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty database, dropped afterwards."""
    import psycopg

    name = f"kled_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class RunningServer:
    """A control plane served from a background thread with its own event loop."""

    def __init__(self, data_dir: Path, database: str | None, **settings: Any) -> None:
        settings.setdefault("listen", "127.0.0.1:0")
        settings.setdefault("socket", data_dir / "kled.sock")
        self.settings = ServerSettings(data_dir=data_dir, database=database, **settings)
        self.plane = ControlPlane(self.settings)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as e:  # surfaced to the test by start()
            self._error = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        await self.plane.open()
        self.plane.bind()
        try:
            await self.plane.serve(on_ready=self._ready.set)
        finally:
            await self.plane.close()

    def start(self) -> RunningServer:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.plane.stop)
        self._thread.join(30)

    @property
    def url(self) -> str:
        return self.plane.url

    @property
    def admin_token(self) -> str:
        return (self.settings.data_dir / "admin.token").read_text().strip()

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=30,
        )


def control_office(server: EmbeddedNats, **options: object) -> MessageOffice:
    """An office with the control plane's rights on ``server`` (not yet connected)."""
    return MessageOffice(
        ConnectOptions(
            url=server.url,
            user=server.control_user,
            password=server.control_password,
            **options,  # type: ignore[arg-type]
        )
    )
