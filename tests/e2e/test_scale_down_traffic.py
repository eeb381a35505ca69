"""A scale-down under load drops no request: each removed replica leaves every gateway's
backends before it gets SIGTERM (graceful stop, docs/apps.md).

The same lab as the rolling update test (``test_rollout_traffic``: one agent with the mesh
on, ``probeapp.py`` replicas behind the service IP, a client pod GETting it in a loop
through the gateway's DNAT); here the app goes from 3 replicas to 1 while the loop runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from agentlab import IDLE_CMD, Mesh, eventually
from test_rollout_traffic import Load, change, mesh, rollout, web

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

__all__ = ["mesh"]  # the fixture, shared with test_rollout_traffic


def prestops(state: Path) -> list[str]:
    """The preStop lines the web replicas wrote (one per replica stopped)."""
    events = state / "events"
    lines = events.read_text().splitlines() if events.exists() else []
    return [line for line in lines if "prestop" in line.lower()]


def test_scale_down_under_load_fails_no_request(mesh: Mesh, tmp_path: Path) -> None:
    state = tmp_path / "web-state"
    state.mkdir()
    mesh.start_agent(1)
    mesh.team("a", "100.93.0.0/16")
    mesh.app("a", "web", web(state, "v1"))
    mesh.app("a", "client", {"command": IDLE_CMD})
    try:
        service_ip = eventually(lambda: rollout(mesh)["ip"], "web service IP")
        client = mesh.pod_ns(1, "a", "a.dev.client.0")
        eventually(lambda: Path(f"/run/netns/{client}").exists(), "the client's pod")
        eventually(lambda: rollout(mesh)["readyReplicas"] == 3, "3 replicas ready")
        eventually(
            lambda: {a.split("-")[0] for a in mesh.ask(client, service_ip, 80, count=12)} == {"v1"},
            "v1 answering through the service IP",
        )
        load = Load(mesh, client, service_ip, tmp_path)

        def one_left() -> bool:
            status = rollout(mesh)
            return status["readyReplicas"] == 1 and len(status["replicas"]) == 1

        try:
            eventually(lambda: load.proc.poll() is None, "the load loop running")
            change(mesh, lambda spec: spec.update(replicas=1))
            eventually(one_left, "scaled down to 1 replica")
            # the status says 1 as soon as it is planned; the two replicas stop after it,
            # each drained first: the load runs on until both have run their preStop
            eventually(lambda: len(prestops(state)) >= 2, "both stopped replicas' preStop")
            # requests keep going to the one left for a while after the others are gone
            answers_after = mesh.ask(client, service_ip, 80, count=5)
        finally:
            result = load.stop()
        assert result["failed"] == [], result["failed"][:5]
        assert result["ok"] > 0
        assert {a.split("-")[0] for a in answers_after} == {"v1"}
        assert len(prestops(state)) >= 2, prestops(state)
    except BaseException:
        print(mesh.dump_logs())
        raise
