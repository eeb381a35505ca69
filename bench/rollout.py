"""Rolling updates under load: requests served and failed, latency, time to roll (issue 14,
"Measure").

The stack of tests/e2e/agentlab.py: the control plane and one agent on a namespace host
with the network layer on, an app ``web`` (tests/e2e/probeapp.py: an HTTP server with a
readiness probe and a preStop hook) behind its service IP, and a client pod asking the
service IP in a loop (tests/e2e/loadloop.py: one fresh connection per request, one after
the other, 5 ms apart). For each case the command changes (a new answer name), which rolls
every replica; measured from the ``PUT`` to the moment ``status.rollout`` reads Complete
(polled every 0.1 s), with the load running from before the change to after it:

- ``rolling_3`` / ``rolling_10``: RollingUpdate with the defaults (25 % / 25 %);
- ``recreate_3`` / ``recreate_10``: Recreate, the baseline: every replica restarted at once.

Each case prints requests ok and failed, p50/p99 latency of the successful ones in ms and
the rollout time in seconds.

``autoscale``: an app asking for 100m of CPU whose replicas spin a core while a file exists
(tests/e2e/test_autoscale_load.py), min 1, max 3, target 50 %, no scale-down window, the
agent sampling usage every 2 s and the autoscaler looking every 15 s: seconds from the load
starting to the decision of 3 replicas and to 3 ready, and from the load stopping to the
decision of 1.

``from_zero``: ``web`` with ``autoscale.minReplicas: 0`` and ``scaleToZeroAfterSeconds: 3``
(tests/e2e/test_scale_from_zero.py), scaled to zero, then one ``curl`` from the client pod
to its service IP: seconds from the request to its answer (held at the gateway's router
while the control plane starts a replica and it gets ready), for each of ``ZERO_ROUNDS``
rounds, with their median.

Everything shares this machine's cores, so the counts carry over, the times only roughly.
Needs root, ``ip``, ``nft``, ``wireguard-go``, ``curl``.

    python bench/rollout.py [--quick] [--zero-only]  # --quick: 3 replicas only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from agentlab import IDLE_CMD, Mesh, eventually, lab_mesh  # noqa: E402 - after the path set-up
from test_autoscale_load import BURN  # noqa: E402
from test_rollout_traffic import Load, change, command, web  # noqa: E402
from test_scale_from_zero import APP, curl  # noqa: E402

ZERO_ROUNDS = 3


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 2)


def roll(mesh: Mesh, state: Path, root: Path, client: str, ip: str, name: str) -> dict[str, Any]:
    """Change the command to answer ``name``; measure until the rollout is Complete."""
    load = Load(mesh, client, ip, root)
    time.sleep(1)  # the loop is running before the change
    number = int(mesh.get_app("a", "web")["status"]["rollout"]["revision"]) + 1
    started = time.monotonic()
    change(mesh, command(state, name))
    while True:
        roll = mesh.get_app("a", "web")["status"].get("rollout") or {}
        if roll.get("revision") == number and roll.get("phase") == "Complete":
            break
        if roll.get("phase") == "Stalled" or time.monotonic() - started > 600:
            raise RuntimeError(f"rollout stalled: {roll}")
        time.sleep(0.1)
    took = time.monotonic() - started
    time.sleep(1)
    result = load.stop()
    latencies = [float(v) for v in result["latencies_ms"]]
    return {
        "ok": result["ok"],
        "failed": len(result["failed"]),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
        "rollout_seconds": round(took, 2),
    }


def case(root: Path, replicas: int, strategy: str) -> dict[str, Any]:
    state = root / "state"
    state.mkdir(parents=True)
    with lab_mesh(root, 1, f"benchroll{replicas}") as mesh:
        mesh.start_agent(1)
        mesh.team("a", "100.94.0.0/16")
        spec = web(state, "v1", strategy={"type": strategy})
        spec["replicas"] = replicas
        mesh.app("a", "web", spec)
        mesh.app("a", "client", {"command": IDLE_CMD})
        ip = eventually(lambda: mesh.get_app("a", "web")["status"]["ip"], "service IP")
        client = mesh.pod_ns(1, "a", "a.dev.client.0")
        eventually(lambda: Path(f"/run/netns/{client}").exists(), "client pod")
        eventually(
            lambda: mesh.get_app("a", "web")["status"].get("readyReplicas") == replicas,
            "replicas ready",
        )
        eventually(lambda: set(mesh.ask(client, ip, 80, count=4)) != set(), "answers")
        return roll(mesh, state, root, client, ip, "v2")


def autoscaling(root: Path) -> dict[str, Any]:
    flag = root / "burn"
    with lab_mesh(root, 1, "benchscale") as mesh:
        mesh.start_agent(1, "--usage-interval", "2")
        mesh.team("a", "100.96.0.0/16")
        mesh.app("a", "burn", {
            "command": [sys.executable, "-c", BURN, str(flag)],
            "resources": {"cpu": "100m"},
            "autoscale": {"minReplicas": 1, "maxReplicas": 3,
                          "targetCPUUtilizationPercentage": 50,
                          "scaleDownStabilizationSeconds": 0},
        })  # fmt: skip

        def status() -> dict[str, Any]:
            found: dict[str, Any] = mesh.get_app("a", "burn").get("status") or {}
            return found

        def wait(check: Any) -> float:
            started = time.monotonic()
            while not check(status()):
                if time.monotonic() - started > 300:
                    raise RuntimeError(f"autoscaling never got there: {status()}")
                time.sleep(0.1)
            return round(time.monotonic() - started, 2)

        wait(lambda s: s.get("readyReplicas") == 1)
        time.sleep(3)  # a usage sample of the idle replica first
        started = time.monotonic()
        flag.touch()
        decided = wait(lambda s: (s.get("autoscale") or {}).get("desiredReplicas") == 3)
        wait(lambda s: s.get("readyReplicas") == 3)
        ready = round(time.monotonic() - started, 2)
        flag.unlink()
        down = wait(lambda s: (s.get("autoscale") or {}).get("desiredReplicas") == 1)
        return {"up_decided_seconds": decided, "up_ready_seconds": ready,
                "down_decided_seconds": down}  # fmt: skip


def from_zero(root: Path) -> dict[str, Any]:
    state = root / "web-state"
    state.mkdir()
    with lab_mesh(root, 1, "benchzero") as mesh:
        mesh.start_agent(1)
        mesh.team("a", "100.97.0.0/16")
        mesh.app("a", "web", {
            "command": [sys.executable, str(APP), "cold", str(state), "8080"],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                               "periodSeconds": 1, "failureThreshold": 1},
            "resources": {"cpu": "100m"},
            "autoscale": {"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": 3},
        })  # fmt: skip
        mesh.app("a", "client", {"command": IDLE_CMD})

        def status() -> dict[str, Any]:
            found: dict[str, Any] = mesh.get_app("a", "web").get("status") or {}
            return found

        ip = eventually(lambda: status().get("ip"), "web service IP")
        client = mesh.pod_ns(1, "a", "a.dev.client.0")
        eventually(lambda: Path(f"/run/netns/{client}").exists(), "the client's pod")
        times: list[float] = []
        for _ in range(ZERO_ROUNDS):
            eventually(
                lambda: (
                    (status().get("autoscale") or {}).get("desiredReplicas") == 0
                    and not status().get("replicas")
                ),
                "scaled to zero",
            )
            # and the gateway's router has no backend left (the last replica is gone)
            eventually(
                lambda: all(
                    not route["backends"]
                    for path in root.glob("node1/net/*/a.router.json")
                    for route in json.loads(path.read_text())["routes"]
                ),
                "no backend at the gateway",
            )
            started = time.monotonic()
            answer = curl(client, ip)
            if answer.returncode != 0 or not answer.stdout.startswith("cold-"):
                raise RuntimeError(f"no answer from zero: {answer}")
            times.append(round(time.monotonic() - started, 2))
        return {"first_answer_seconds": times, "median_seconds": statistics.median(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 replicas only")
    parser.add_argument("--zero-only", action="store_true", help="only from_zero")
    args = parser.parse_args()
    sizes = [3] if args.quick else [3, 10]
    out: dict[str, Any] = {"bench": "rollout", "load": "sequential GETs, 5 ms apart"}
    with tempfile.TemporaryDirectory(prefix="kled-bench-zero-") as tmp:
        out["from_zero"] = from_zero(Path(tmp))
    if args.zero_only:
        print(json.dumps(out, indent=2))
        return 0
    for replicas in sizes:
        for strategy, label in (("RollingUpdate", "rolling"), ("Recreate", "recreate")):
            with tempfile.TemporaryDirectory(prefix="kled-bench-rollout-") as tmp:
                out[f"{label}_{replicas}"] = case(Path(tmp), replicas, strategy)
    with tempfile.TemporaryDirectory(prefix="kled-bench-autoscale-") as tmp:
        out["autoscale"] = autoscaling(Path(tmp))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
