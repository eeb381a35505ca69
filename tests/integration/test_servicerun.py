"""The on-node server of a managed service (``kled.agent.servicerun``) with Debian's real
PostgreSQL, on a free port of this host: one server per data directory, backups that are
real dumps, a failed backup that leaves the earlier ones as they were and says why, and
``--purge`` that removes the data when the server stops."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = "/usr/lib/postgresql/15/bin"
pytestmark = pytest.mark.skipif(
    not Path(PG_BIN, "postgres").exists(), reason="Debian's postgresql-15 is not installed"
)
ENV = {**os.environ, "user": "app", "password": "pw-1", "database": "app"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runner(verb: str, data: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kled.agent.servicerun", verb, "--engine", "postgres",
            "--bin-dir", PG_BIN, "--data", str(data), "--port", str(port), *extra]  # fmt: skip


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def root() -> Iterator[Path]:
    # The server runs as the postgres user, who cannot enter pytest's private tmp folders.
    folder = Path(tempfile.mkdtemp(prefix="kled-servicerun-", dir="/var/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def server(root: Path) -> Iterator[tuple[Path, int, subprocess.Popen[str]]]:
    data, port = root / "svc", _free_port()
    proc = subprocess.Popen(_runner("serve", data, port), env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        for _ in range(600):
            if _run(_runner("health", data, port)).returncode == 0:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        yield data, port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)


def _psql(port: int, sql: str) -> str:
    argv = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "app", "-d", "app", "-tAc", sql]
    done = subprocess.run(argv, env={**ENV, "PGPASSWORD": "pw-1"}, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_one_server_per_data_dir_and_backups(
    server: tuple[Path, int, subprocess.Popen[str]], root: Path
) -> None:
    data, port, proc = server
    _psql(port, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")

    second = _run(_runner("serve", data, _free_port()))
    assert second.returncode == 1
    assert f"data directory {data} is in use by pid {proc.pid}" in second.stderr

    backups = root / "backups"
    done = _run(_runner("backup", data, port, "--to", str(backups), "--label", "db"))
    assert done.returncode == 0, done.stderr
    first = sorted(backups.iterdir())
    assert len(first) == 1 and first[0].read_bytes()[:5] == b"PGDMP"

    # The server stops: a backup now fails, says why, and leaves the first one whole.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    failed = _run(_runner("backup", data, port, "--to", str(backups), "--label", "db"))
    assert failed.returncode == 1
    assert failed.stderr.startswith("servicerun: pg_dump failed:"), failed.stderr
    assert sorted(backups.iterdir()) == first  # no partial file beside it

    # Restored into a new data directory: the rows, and the new service's own password.
    port2 = _free_port()
    restored = subprocess.Popen(
        _runner("serve", root / "svc2", port2, "--restore-from", str(first[0])),
        env={**ENV, "password": "pw-2"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        env2 = {**ENV, "password": "pw-2"}
        for _ in range(600):
            health = _runner("health", root / "svc2", port2)
            if subprocess.run(health, env=env2, check=False).returncode == 0:
                break
            time.sleep(0.1)
        argv = ["psql", "-h", "127.0.0.1", "-p", str(port2), "-U", "app", "-d", "app", "-tAc",
                "SELECT count(*) FROM t"]  # fmt: skip
        got = subprocess.run(argv, env={**ENV, "PGPASSWORD": "pw-2"}, capture_output=True,
                             text=True, check=False)  # fmt: skip
        assert got.stdout.strip() == "2", got.stderr
        # --purge: the data goes with the server's stop
        (root / "svc2" / "purge-on-stop").touch()
    finally:
        restored.send_signal(signal.SIGTERM)
        restored.wait(60)
    assert not (root / "svc2").exists()
    assert (root / "svc" / "data" / "PG_VERSION").exists()
