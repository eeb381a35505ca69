"""``kled up`` runs the control plane, the embedded NATS and a local agent in one command."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

import psutil
import pytest
import yaml
from clikit import Cli, ServerProcess, free_port

from kled.cli.server import local_node_name

MARKER = random.randint(6_000_000, 6_999_999)
TEAM = f"updemo-{MARKER}"


def _sleepers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if (p.info["cmdline"] or [])[-2:] == ["sleep", str(MARKER)]:
            if p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def _until(check: object, what: str) -> None:
    assert callable(check)
    for _ in range(600):
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}")


def start_up(cli: Cli) -> tuple[ServerProcess, list[str]]:
    """`kled up` on a free port, and the lines it prints as they come."""
    port = free_port()
    up = ServerProcess(cli, cli.home / ".local" / "share" / "kled", port)
    # no team meshes: these tests are about `kled up` and its agent, not the network
    up.proc = cli.popen("up", "--listen", f"127.0.0.1:{port}", "--agent-network", "off")
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(up.proc.stdout or []), daemon=True).start()
    return up, lines


@pytest.mark.slow
def test_up_runs_a_local_agent_that_runs_apps(cli: Cli) -> None:
    up, lines = start_up(cli)
    port, data_dir = up.port, up.data_dir
    node = local_node_name()
    try:
        _until(lambda: any("Next:" in line for line in lines), "kled up announced itself")
        text = "".join(lines)
        assert f"Kled is up at http://127.0.0.1:{port}" in text
        assert f"Token file: {data_dir / 'admin.token'}" in text
        assert "Message Office (embedded NATS) on nats://127.0.0.1:" in text
        assert f"Local agent: node/{node} (log {data_dir / 'agent.log'})" in text

        def ready() -> bool:
            nodes = json.loads(cli.ok("node", "list", "-o", "json"))["items"]
            return any(
                n["metadata"]["name"] == node and n.get("status", {}).get("phase") == "Ready"
                for n in nodes
            )

        _until(ready, "the local node Ready")
        cli.ok("team", "create", TEAM)
        cli.ok("context", "set", "--team", TEAM)
        cli.ok("env", "create", "dev")
        app = {
            "apiVersion": "kled.io/v1",
            "kind": "App",
            "metadata": {"name": "api"},
            "spec": {"command": ["sh", "-c", f"echo up; exec sleep {MARKER}"]},
        }
        cli.ok("apply", "-f", "-", "-e", "dev", stdin=yaml.safe_dump(app))

        def running() -> bool:
            rows = cli.ok("get", "apps", "-e", "dev").splitlines()[1:]
            return any(r.split()[:5] == ["api", "dev", "process", "1/1", "Running"] for r in rows)

        _until(running, "api Running on the local agent")
        assert len(_sleepers()) == 1
        agent = [
            p
            for p in psutil.process_iter(["cmdline"])
            if "kled.agent" in (p.info["cmdline"] or [])
            and str(data_dir / "agent") in (p.info["cmdline"] or [])
        ]
        assert len(agent) == 1
        assert up.stop(signal.SIGINT) == 0
        psutil.wait_procs(agent, timeout=20)
        assert not agent[0].is_running() or agent[0].status() == psutil.STATUS_ZOMBIE
        assert len(_sleepers()) == 1  # replicas outlive the agent, by design

        # `kled down` takes down what stayed, and keeps what the server stored.
        down = cli.ok("down")
        assert "local agent: stopped 1 replica, removed" in down, down
        assert f"data kept in {data_dir}" in down
        assert _sleepers() == []
        assert (data_dir / "kled.db").exists()
    finally:
        up.stop(signal.SIGKILL)
        for p in _sleepers():
            p.kill()


@pytest.mark.slow
def test_down_stops_a_running_up(cli: Cli) -> None:
    up, lines = start_up(cli)
    data_dir = up.data_dir
    try:
        _until(lambda: any("Next:" in line for line in lines), "kled up announced itself")
        assert (data_dir / "up.pid").read_text().strip() == str(up.proc.pid)
        down = cli.ok("down")
        assert f"kled up (pid {up.proc.pid}) stopped" in down
        assert up.proc.wait(30) == 0
        assert not (data_dir / "up.pid").exists()
        # Nothing left to stop: says so, and succeeds.
        assert "kled up" not in cli.ok("down")
    finally:
        up.stop(signal.SIGKILL)
