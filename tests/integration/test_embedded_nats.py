"""The control plane keeps its embedded nats-server alive and at one address."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from servers import RunningServer


def wait_for(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def nats_pid(server: RunningServer) -> int:
    hosts = server.plane.hosts
    assert hosts is not None and hosts.embedded is not None
    proc = hosts.embedded._proc
    assert proc is not None
    return proc.pid


def test_a_killed_nats_server_is_started_again_on_the_same_port(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data", None, embedded_nats=True).start()
    try:
        hosts = server.plane.hosts
        assert hosts is not None and hosts.embedded is not None
        port, first = hosts.embedded.port, nats_pid(server)
        os.kill(first, signal.SIGKILL)
        wait_for(
            lambda: (
                hosts.embedded is not None and hosts.embedded.running and nats_pid(server) != first
            ),
            "a new nats-server",
        )
        assert hosts.embedded.port == port
        # Agents can still join: registration goes through the Message Office again.
        with server.client() as c:
            token = c.post("/api/v1/node-tokens", json={"ttl": "5m"}).json()["token"]
        body = {"token": token, "name": "n1", "labels": {}, "capabilities": []}
        reply = httpx.post(server.url + "/api/v1/nodes/register", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["nats_url"].endswith(f":{port}")
    finally:
        server.stop()
    again = RunningServer(tmp_path / "data", None, embedded_nats=True).start()
    try:
        assert again.plane.hosts is not None and again.plane.hosts.embedded is not None
        assert again.plane.hosts.embedded.port == port  # saved agents' URL still works
    finally:
        again.stop()
