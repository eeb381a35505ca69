"""Scale to zero and back on a real agent, a real gateway and a real request.

``web`` (``probeapp.py``, ready once it serves) has ``autoscale.minReplicas: 0``: its
service port goes through the team gateway's router, which counts connections. With no
connection for ``scaleToZeroAfterSeconds`` (3 s here; the autoscaler looks every 15 s)
the app goes to 0 replicas. Then one ``curl`` from a client pod to the service IP is held
at the gateway, the router tells the agent, the agent's heartbeat tells the control plane,
a replica starts and becomes ready, and the held request gets its answer. While replicas
run, requests keep the app awake.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentlab import IDLE_CMD, Mesh, eventually, lab_mesh

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

APP = Path(__file__).with_name("probeapp.py")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with lab_mesh(tmp_path, 1, "zerotest") as m:
        yield m


def status(mesh: Mesh) -> dict[str, Any]:
    found: dict[str, Any] = mesh.get_app("a", "web").get("status") or {}
    return found


def curl(ns: str, ip: str) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "90", f"http://{ip}/"]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def test_an_idle_app_goes_to_zero_and_its_first_request_is_answered(
    mesh: Mesh, tmp_path: Path
) -> None:
    state = tmp_path / "web-state"
    state.mkdir()
    mesh.start_agent(1)
    mesh.team("a", "100.96.0.0/16")
    mesh.app("a", "web", {
        "command": [sys.executable, str(APP), "cold", str(state), "8080"],
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                           "periodSeconds": 1, "failureThreshold": 1},
        "resources": {"cpu": "100m"},
        "autoscale": {"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": 3},
    })  # fmt: skip
    mesh.app("a", "client", {"command": IDLE_CMD})
    try:
        ip = eventually(lambda: status(mesh).get("ip"), "web service IP")
        client = mesh.pod_ns(1, "a", "a.dev.client.0")
        eventually(lambda: Path(f"/run/netns/{client}").exists(), "the client's pod")
        eventually(lambda: status(mesh).get("readyReplicas") == 1, "one replica ready")
        warm = curl(client, ip)
        assert warm.returncode == 0 and warm.stdout.startswith("cold-"), warm

        web_pod = Path(f"/run/netns/{mesh.pod_ns(1, 'a', 'a.dev.web.0')}")

        def at_zero() -> bool:
            # the status drops the replica as soon as it is planned away; its pod goes only
            # after its drain and stop, and a request sent before that is served by it
            s = status(mesh)
            planned = (s.get("autoscale") or {}).get("desiredReplicas") == 0
            return planned and not s.get("replicas") and not web_pod.exists()

        eventually(at_zero, "scaled to zero")
        started = time.monotonic()
        first = curl(client, ip)
        took = time.monotonic() - started
        assert first.returncode == 0, first
        assert first.stdout.startswith("cold-"), first
        print(f"first request from zero answered in {took:.2f}s")
        # the status follows the replica's report (the gateway took it as a backend first)
        eventually(lambda: status(mesh).get("readyReplicas") == 1, "the status says 1 ready")
        s = status(mesh)
        messages = [e["message"] for e in s["events"] if e["reason"] == "SuccessfulRescale"]
        assert any(m.startswith("new size 0 (was 1): no new connection for 3s") for m in messages)
        assert messages[-1] == "new size 1 (was 0): a request is waiting at a gateway", messages
    except BaseException:
        print(mesh.dump_logs())
        raise
