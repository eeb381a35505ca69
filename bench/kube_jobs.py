"""A Kled Cluster's batch/v1 Job against the Kled Job it becomes (issue 16, Jobs).

The full stack of tests/e2e/agentlab.py: the control plane in a namespace host and one
agent in another. Each round, one after the other in the same run:

- ``kled_job``: a Kled Job (process runtime, ``python -c pass``) POSTed to the Kled API,
  then its status read every 50 ms until it is ``Succeeded`` (the peer: Kled's own Jobs);
- ``kube_job``: the same command as a ``batch/v1`` Job POSTed to the cluster's Kubernetes
  API, then its status read the same way until the ``Complete`` condition: the Kled Job
  plus the mapping and the mirror that writes the Job's status back;
- ``kubectl``: ``kubectl apply -f`` of such a Job then ``kubectl wait
  --for=condition=complete``, both processes included: what a user waits for.

Prints p50 and p90 of each, and the ratio of ``kube_job`` to ``kled_job`` at p50 (what the
Kubernetes face costs). 10 rounds (3 with ``--quick``). Needs root and kubectl.

    python bench/kube_jobs.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
# The agent lab of the end-to-end tests (and the servers fixture it builds on).
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

POLL = 0.05


def _until(check: Callable[[], bool], limit: float = 120.0) -> float:
    """Seconds until ``check`` holds (polled every 50 ms)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            raise TimeoutError("never finished")
        time.sleep(POLL)
    return time.monotonic() - start


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 3), "p90": round(p90, 3), "n": len(values)}


def _kube_job(name: str, marker: str, marker_var: str) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "python:3",
        "command": [sys.executable, "-c", "pass"],
        "env": [{"name": marker_var, "value": marker}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "annotations": {"kled.io/runtime": "process"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    rounds = 3 if parser.parse_args().quick else 10
    from agentlab import MARKER_VAR, lab_mesh

    from kled.cli.clusters import render
    from kubekit import Kubectl, kubectl_binary

    binary = kubectl_binary()
    if binary is None:
        sys.exit("kubectl is not on the PATH")
    results: dict[str, list[float]] = {"kled_job": [], "kube_job": [], "kubectl": []}
    with tempfile.TemporaryDirectory() as tmp, lab_mesh(Path(tmp), 1, "benchjobs") as mesh:
        mesh.start_agent(1)
        mesh.team("a", "100.97.0.0/16")
        mesh.api(
            "POST", "/api/v1/teams/a/clusters", {"kind": "Cluster", "metadata": {"name": "c1"}}
        )
        answer = mesh.api("POST", "/k8s/a/c1/kled/token", {})
        config = Path(tmp) / "kubeconfig"
        config.write_text(
            render(answer["server"], "a", "c1", answer["user"], answer["token"],
                   answer["certificateAuthorityData"])
        )  # fmt: skip
        k = Kubectl(binary, config, Path(tmp) / "home", netns=mesh.lab.host(2))
        k.ok("get", "ns")  # discovery cached before the first round
        jobs = "/k8s/a/c1/apis/batch/v1/namespaces/default/jobs"

        def succeeded(path: str) -> Callable[[], bool]:
            return lambda: mesh.api("GET", path).get("status", {}).get("phase") == "Succeeded"

        def complete(path: str) -> Callable[[], bool]:
            def check() -> bool:
                status = mesh.api("GET", path).get("status") or {}
                return any(c.get("type") == "Complete" for c in status.get("conditions") or [])

            return check

        for n in range(rounds):
            native = {
                "apiVersion": "kled.io/v1",
                "kind": "Job",
                "metadata": {"name": f"native{n}"},
                "spec": {"command": [sys.executable, "-c", "pass"],
                         "env": {MARKER_VAR: mesh.marker}},
            }  # fmt: skip
            start = time.monotonic()
            mesh.api("POST", "/api/v1/teams/a/environments/dev/jobs", native)
            _until(succeeded(f"/api/v1/teams/a/environments/dev/jobs/native{n}"))
            results["kled_job"].append(time.monotonic() - start)

            start = time.monotonic()
            mesh.api("POST", jobs, _kube_job(f"kube{n}", mesh.marker, MARKER_VAR))
            _until(complete(f"{jobs}/kube{n}"))
            results["kube_job"].append(time.monotonic() - start)

            manifest = json.dumps(_kube_job(f"cli{n}", mesh.marker, MARKER_VAR))
            start = time.monotonic()
            k.ok("apply", "-f", "-", stdin=manifest)
            k.ok("wait", "--for=condition=complete", f"job/cli{n}", "--timeout=120s")
            results["kubectl"].append(time.monotonic() - start)
    out: dict[str, Any] = {name: _stats(values) for name, values in results.items()}
    out["kube_over_kled_p50"] = round(out["kube_job"]["p50"] / out["kled_job"]["p50"], 2)
    out["machine"] = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
