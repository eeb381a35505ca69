"""Fixtures of the CLI tests: one real control plane per module, a CLI per test.

One in-process server (tests/servers.py) serves a whole test module; each test gets its
own CLI config (``KLED_CONFIG`` in its tmp_path) and uses its own team names, so tests do
not see each other's state. The administrator logs in once per module (a ``kled`` process
costs about half a second); each test starts from its own copy of that config.
"""

from __future__ import annotations

import shutil
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


@pytest.fixture(scope="module")
def admin_config(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config ``kled login`` writes for the administrator of the module's server."""
    login = Cli(tmp_path_factory.mktemp("admin-login"))
    login.ok("login", "--server", server.url, "--token", server.admin_token, "--name", "admin")
    return login.config


@pytest.fixture
def admin(cli: Cli, admin_config: Path) -> Cli:
    """A CLI logged in over TCP as the server administrator (a copy of one login: mode kept)."""
    shutil.copy2(admin_config, cli.config)
    return cli


@pytest.fixture
def server_process(cli: Cli, tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(cli, tmp_path / "data", free_port())
    try:
        yield process
    finally:
        process.stop(signal.SIGKILL)
