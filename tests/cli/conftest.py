"""Fixtures of the CLI tests: one real control plane per module, a CLI per test.

One in-process server (tests/servers.py) serves a whole test module; each test gets its
own CLI config (``KLED_CONFIG`` in its tmp_path) and uses its own team names, so tests do
not see each other's state.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from clikit import Cli, ServerProcess, free_port

from servers import RunningServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(tmp_path_factory.mktemp("server") / "data", None).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def admin(cli: Cli, server: RunningServer) -> Cli:
    """A CLI logged in over TCP as the server administrator."""
    cli.ok("login", "--server", server.url, "--token", server.admin_token, "--name", "admin")
    return cli


@pytest.fixture
def server_process(cli: Cli, tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(cli, tmp_path / "data", free_port())
    try:
        yield process
    finally:
        process.stop(signal.SIGKILL)
