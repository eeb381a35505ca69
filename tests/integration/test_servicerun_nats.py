"""The on-node server of a ``nats`` managed service (``kled.agent.servicerun``) with
Debian's nats-server, on a free port of this host: only the account of the Secret gets in,
JetStream keeps a stream in the data directory, a backup restored into a new service has
the stream's messages and that service's own password."""

from __future__ import annotations

import asyncio
import json
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

import nats
import pytest
from nats.errors import NoServersError

NATS_BIN = "/usr/sbin"
pytestmark = pytest.mark.skipif(
    not Path(NATS_BIN, "nats-server").exists(), reason="Debian's nats-server is not installed"
)
ENV = {**os.environ, "user": "app", "password": "pw-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runner(verb: str, data: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kled.agent.servicerun", verb, "--engine", "nats",
            "--bin-dir", NATS_BIN, "--data", str(data), "--port", str(port), *extra]  # fmt: skip


@pytest.fixture
def root() -> Iterator[Path]:
    # The server runs as the nats user, who cannot enter pytest's private tmp folders.
    folder = Path(tempfile.mkdtemp(prefix="kled-servicerun-", dir="/var/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _serve(data: Path, port: int, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(_runner("serve", data, port, "--param", "max_payload=65536", *extra),
                            env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    for _ in range(600):
        health = subprocess.run(_runner("health", data, port), env=env, check=False)
        if health.returncode == 0:
            return proc
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        time.sleep(0.1)
    raise AssertionError("nats never became healthy")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


async def _publish(url: str) -> int:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="orders", subjects=["orders.*"])
        for i in range(3):
            await js.publish("orders.new", f"order {i}".encode())
        return int(nc.max_payload)
    finally:
        await nc.close()


async def _messages(url: str) -> int:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        info = await nc.jetstream().stream_info("orders")
        return int(info.state.messages)
    finally:
        await nc.close()


async def _refused(url: str) -> bool:
    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
    except (NoServersError, nats.errors.Error, OSError):
        return True
    await nc.close()
    return False


def test_nats_account_jetstream_backup_and_restore(root: Path) -> None:
    port = _free_port()
    proc = _serve(root / "svc", port, ENV)
    try:
        url = f"nats://app:pw-1@127.0.0.1:{port}"
        assert asyncio.run(_publish(url)) == 65536  # the parameter reached the server
        assert asyncio.run(_refused(f"nats://app:wrong@127.0.0.1:{port}"))
        assert not (root / "svc" / "run" / "nats.conf").stat().st_mode & 0o077
        # what the data directory takes, as du counts it (the stream's files among it)
        used = subprocess.run(_runner("usage", root / "svc", port), env=ENV,
                              capture_output=True, text=True, check=True)  # fmt: skip
        du = subprocess.run(["du", "-sB1", str(root / "svc" / "data")], capture_output=True,
                            text=True, check=True)  # fmt: skip
        assert json.loads(used.stdout)["dataBytes"] == int(du.stdout.split()[0])
        backups = root / "backups"
        done = subprocess.run(_runner("backup", root / "svc", port, "--to", str(backups),
                                      "--label", "bus"), env=ENV, capture_output=True,
                              text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        [taken] = list(backups.iterdir())
        assert taken.name.startswith("bus-") and taken.suffix == ".tar"
    finally:
        _stop(proc)

    port2, env2 = _free_port(), {**ENV, "password": "pw-2"}
    restored = _serve(root / "svc2", port2, env2, "--restore-from", str(taken))
    try:
        assert asyncio.run(_messages(f"nats://app:pw-2@127.0.0.1:{port2}")) == 3
        assert asyncio.run(_refused(f"nats://app:pw-1@127.0.0.1:{port2}"))
    finally:
        _stop(restored)
