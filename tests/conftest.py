"""Fixtures shared by every suite: real databases and a real control plane."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import RunningServer, postgres_available, postgres_database


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
