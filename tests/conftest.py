"""Fixtures shared by every suite: real databases and a real control plane.

Starting a control plane costs seconds (migrations, the policy worker processes, the DNS
server), so a module whose tests keep to their own teams shares one per database
(``shared_server``, with ``unique_team`` for names); a test that needs a server of its own
(a restart, settings of its own) uses ``server``.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kled.bus.embedded import EmbeddedNats
from servers import RunningServer, postgres_available, postgres_database


def pytest_configure(config: pytest.Config) -> None:
    """Tests send SIGINT to the `kled` processes they start, as a user's Ctrl-C. A suite
    started in the background of a shell without job control (`make test &` in a script)
    has SIGINT ignored, and an ignored signal stays ignored in every child: the CLI would
    never see it. A handler instead is reset to the default in the children."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A nats-server of the test's own (JetStream, node credentials), on a free port."""
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kled.db'}"
        return
    why = postgres_available()
    if why:
        pytest.skip(why)
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One control plane per module and database; its tests must use distinct team names."""
    data = tmp_path_factory.mktemp("server") / "data"
    with contextlib.ExitStack() as stack:
        url: str | None = None
        if request.param == "postgres":
            why = postgres_available()
            if why:
                pytest.skip(why)
            url = stack.enter_context(postgres_database())
        running = RunningServer(data, url).start()
        try:
            yield running
        finally:
            running.stop()


_team_numbers = itertools.count(1)


@pytest.fixture
def unique_team() -> str:
    """A team name no other test of this process uses, for tests on a shared server."""
    return f"t{next(_team_numbers)}"


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[RunningServer]:
    running = RunningServer(tmp_path / "data", database_url).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[RunningServer]:
    running = RunningServer(tmp_path / "data", None).start()
    try:
        yield running
    finally:
        running.stop()
