"""The control plane keeps its embedded nats-server alive and at one address."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from kled.errors import Unavailable
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


def _listening_on(port: int) -> socket.socket:
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


def test_a_kept_port_taken_since_moves_nats_to_a_free_one(tmp_path: Path) -> None:
    first = RunningServer(tmp_path / "data", None, embedded_nats=True).start()
    assert first.plane.hosts is not None and first.plane.hosts.embedded is not None
    port = first.plane.hosts.embedded.port
    first.stop()
    with _listening_on(port):  # another program took the port while Kled was down
        again = RunningServer(tmp_path / "data", None, embedded_nats=True).start()
        try:
            assert again.plane.hosts is not None and again.plane.hosts.embedded is not None
            moved = again.plane.hosts.embedded.port
            assert moved != port and again.plane.hosts.embedded.running
            assert (tmp_path / "data" / "nats" / "port").read_text().strip() == str(moved)
        finally:
            again.stop()


def test_a_nats_port_asked_for_and_taken_stops_the_server(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with _listening_on(port), pytest.raises(Unavailable, match="nats-server"):
        RunningServer(tmp_path / "data", None, embedded_nats=True, nats_port=port).start()
