"""Autoscaling with a real agent measuring real replicas (cgroup v2 or /proc).

The app ``burn`` asks for 100m of CPU; each replica spins a core while the file
``STATE/burn`` exists and sleeps otherwise. The agent samples usage every 2 s; the
control plane's autoscaler looks every 15 s. Under load the app grows to maxReplicas
(3), `kled get apps` shows it, and once the load is gone it shrinks back to minReplicas
(the stabilisation window is 0 here), each decision an event.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentlab import Mesh, eventually, lab_mesh, laptop_kled

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

BURN = """
import os, sys, time
flag = sys.argv[1]
while True:
    if os.path.exists(flag):
        until = time.monotonic() + 0.2
        while time.monotonic() < until:
            pass
    else:
        time.sleep(0.2)
"""


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with lab_mesh(tmp_path, 1, "autoscaletest") as m:
        yield m


def status(mesh: Mesh) -> dict[str, Any]:
    found: dict[str, Any] = mesh.get_app("a", "burn").get("status") or {}
    return found


def test_scales_up_under_load_and_back_down_after_it(mesh: Mesh, tmp_path: Path) -> None:
    flag = tmp_path / "burn"
    mesh.start_agent(1, "--usage-interval", "2")
    mesh.team("a", "100.95.0.0/16")
    mesh.app("a", "burn", {
        "command": [sys.executable, "-c", BURN, str(flag)],
        "resources": {"cpu": "100m"},
        "autoscale": {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50,
                      "scaleDownStabilizationSeconds": 0},
    })  # fmt: skip
    try:
        eventually(lambda: status(mesh).get("readyReplicas") == 1, "one replica ready")
        flag.touch()

        def up() -> bool:
            s = status(mesh)
            return (s.get("autoscale") or {}).get("desiredReplicas") == 3 and s.get(
                "readyReplicas"
            ) == 3

        eventually(up, "scaled up to 3")
        s = status(mesh)
        assert s["autoscale"]["currentCPUUtilizationPercentage"] > 55
        home = tmp_path / "home"
        home.mkdir()
        done = laptop_kled(mesh, home, mesh.server.admin_token, "get", "apps", "-e", "dev")
        row = next(line for line in done.stdout.splitlines() if line.startswith("burn"))
        assert " 3/3 " in f" {row} ", done.stdout

        flag.unlink()

        def down() -> bool:
            s = status(mesh)
            return (s.get("autoscale") or {}).get("desiredReplicas") == 1 and len(
                s.get("replicas") or []
            ) == 1

        eventually(down, "scaled back down to 1")
        rescales = [e for e in status(mesh)["events"] if e["reason"] == "SuccessfulRescale"]
        assert [e["message"].split(":")[0] for e in rescales] == [
            "new size 3 (was 1)",
            "new size 1 (was 3)",
        ], rescales
    except BaseException:
        print(mesh.dump_logs())
        raise
