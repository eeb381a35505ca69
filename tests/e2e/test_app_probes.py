"""Probes and graceful stop with a real agent, real replicas and a real team gateway.

One lab host runs an agent with the mesh on (``agentlab``); the control plane runs in
this process inside a host of its own. The app ``web`` (``probeapp.py``: an HTTP server
whose readiness and liveness answers the test steers with files) has two replicas behind
its service IP, asked from a client pod through the team gateway's DNAT, so "a backend"
means what the nftables rules really do. Checked: a replica whose readiness endpoint
fails is not Ready and gets no requests, and serves again once it passes; a failing
liveness probe restarts the replica with the reason in its status and an event; a
scale-down under a request loop through the service IP fails no request, and the stopping
replica gets its preStop hook before SIGTERM.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentlab import IDLE_CMD, Mesh, eventually, lab_mesh

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

APP = Path(__file__).with_name("probeapp.py")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with lab_mesh(tmp_path, 1, "probetest") as m:
        yield m


def _web(state: Path) -> dict[str, Any]:
    return {
        "command": [sys.executable, str(APP), "web", str(state), "8080"],
        "replicas": 2,
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                           "periodSeconds": 1, "failureThreshold": 1},
        "livenessProbe": {"httpGet": {"path": "/live", "port": 8080},
                          "periodSeconds": 1, "failureThreshold": 2},
        "lifecycle": {"preStop": {"httpGet": {"path": "/prestop", "port": "http"}}},
        "terminationGracePeriodSeconds": 5,
    }  # fmt: skip


def test_only_ready_replicas_serve_liveness_restarts_and_scale_down_drops_nothing(
    mesh: Mesh, tmp_path: Path
) -> None:
    state = tmp_path / "web-state"
    state.mkdir()
    (state / "unready-all").touch()
    mesh.start_agent(1)
    mesh.team("a", "100.92.0.0/16")
    mesh.app("a", "web", _web(state))
    mesh.app("a", "client", {"command": IDLE_CMD})
    try:
        _scenario(mesh, state)
    except BaseException:
        print(mesh.dump_logs())
        raise


def _replicas(mesh: Mesh) -> list[dict[str, Any]]:
    reps: list[dict[str, Any]] = mesh.get_app("a", "web")["status"]["replicas"]
    return reps


def _scenario(mesh: Mesh, state: Path) -> None:
    service_ip = eventually(lambda: mesh.get_app("a", "web")["status"]["ip"], "web service IP")
    client = mesh.pod_ns(1, "a", "a.dev.client.0")
    eventually(lambda: Path(f"/run/netns/{client}").exists(), "the client's pod")

    def answers(count: int = 10) -> set[str]:
        return set(mesh.ask(client, service_ip, 80, count=count))

    # Running but failing readiness: not Ready, and no backend behind the service IP.
    def running_not_ready() -> bool:
        reps = _replicas(mesh)
        return len(reps) == 2 and all(
            r["state"] == "Running" and r.get("ready") is False for r in reps
        )

    eventually(running_not_ready, "both replicas Running and not ready")
    status = mesh.get_app("a", "web")["status"]
    assert status["readyReplicas"] == 0
    assert all(a.startswith("!") for a in answers(3)), "a not-ready replica got a request"

    # The readiness endpoint passes: both become backends.
    (state / "unready-all").unlink()

    def both() -> set[str]:
        got = answers()
        return got if len(got) == 2 and all(a.startswith("web-") for a in got) else set()

    names = eventually(both, "both replicas serving once ready")
    assert mesh.get_app("a", "web")["status"]["readyReplicas"] == 2

    # One replica's readiness fails: it leaves the service, the other serves alone.
    first, second = sorted(names)
    (state / f"unready-{first.split('-')[1]}").touch()
    eventually(lambda: answers() == {second}, "only the ready replica serving")
    assert eventually(
        lambda: mesh.get_app("a", "web")["status"]["readyReplicas"] == 1, "readyReplicas 1"
    )
    (state / f"unready-{first.split('-')[1]}").unlink()
    eventually(lambda: answers() == names, "the replica back once ready again")

    # Liveness fails on the second: restarted by the agent, the reason in its status.
    (state / f"dead-{second.split('-')[1]}").touch()

    def restarted() -> dict[str, Any] | None:
        for r in _replicas(mesh):
            if r.get("lastRestartReason") and r["state"] == "Running" and r.get("ready"):
                return r
        return None

    entry = eventually(restarted, "the unhealthy replica restarted")
    assert entry["lastRestartReason"] == "Liveness probe failed: HTTP 500"
    assert entry["restarts"] >= 1
    events = mesh.get_app("a", "web")["status"].get("events") or []
    assert any(e["reason"] == "Unhealthy" and "Liveness probe failed: HTTP 500" in e["message"]
               for e in events), events  # fmt: skip
    now = eventually(both, "both replicas serving after the restart")
    assert second not in now

    # Scale down under a request loop through the service IP: no request fails.
    before = len((state / "events").read_text().splitlines())  # the liveness kill's SIGTERM
    loop = subprocess.Popen(
        ["ip", "netns", "exec", client, sys.executable, str(APP), "load", service_ip, "80", "12"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        doc = mesh.get_app("a", "web")
        doc["spec"]["replicas"] = 1
        mesh.api("PUT", "/api/v1/teams/a/environments/dev/apps/web", doc)
        out, _ = loop.communicate(timeout=60)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    result = json.loads(out)
    assert result["ok"] > 100 and result["failed"] == [], result
    lines = [line.split() for line in (state / "events").read_text().splitlines()[before:]]
    stopped = {pid for what, pid, _ in lines if what == "sigterm"}
    assert len(stopped) == 1, lines
    order = [what for what, pid, _ in lines if pid in stopped]
    assert order == ["prestop", "sigterm"], lines
    # ... and the preStop hook came once this host's gateway had dropped the replica.
    log = (mesh.root / "node1.log").read_text().splitlines()
    drained = [i for i, line in enumerate(log) if "web.1 left this host's service backends" in line]
    hooked = [i for i, line in enumerate(log) if "web.1 preStop hook" in line]
    assert drained and hooked and drained[-1] < hooked[-1], (drained, hooked)
