"""Kled Clusters (issue 16, "Measure"): how fast a cluster answers kubectl, and how fast a
Deployment applied with kubectl has every pod Ready on a real agent.

``create_to_first_get_ns``: a control plane on SQLite (tests/servers.py), a team; for
each of N clusters, from the ``POST`` of the Cluster, through issuing its kubeconfig token,
to the first ``kubectl get ns`` that lists ``default`` (the kubectl process included:
``kubectl_alone`` is what one ``kubectl get ns`` against a warm cluster costs, for scale).

``apply_to_ready``: the agent lab of the end-to-end tests (tests/e2e/agentlab.py: the
control plane and one agent on namespace hosts, root needed); for each of N rounds, from
``kubectl apply`` of a 3-replica Deployment (process runtime, a readiness probe checked
every second) to ``kubectl get pods`` showing three Ready pods; then it is deleted and
the bench waits for its replicas to stop. The readiness probe period bounds this figure
from below (a replica is Ready after its first passing probe).

``get_pods_1000``: the SQLite control plane again, one cluster holding 1,000 Pods (created
through its Kubernetes API, not run); ``kubectl get pods`` (the server's Table) and
``kubectl get pods -o json`` (every object), the kubectl process included.

Goals from the issue: create < 1 s, Deployment ready < 3 s (vcluster publishes "seconds").

    python bench/cluster.py [--quick]
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

from kled.cli.clusters import render  # noqa: E402
from kubekit import Kubectl, kubectl_binary  # noqa: E402
from servers import RunningServer  # noqa: E402


def _summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(samples),
        "p50_s": round(statistics.median(samples), 4),
        "p99_s": round(p99, 4),
        "max_s": round(max(samples), 4),
    }


def _kubeconfig(answer: dict[str, Any], team: str, cluster: str, path: Path) -> Path:
    path.write_text(
        render(answer["server"], team, cluster, answer["user"], answer["token"],
               answer["certificateAuthorityData"])
    )  # fmt: skip
    return path


def create_to_first_get_ns(rounds: int, binary: Path, tmp: Path) -> dict[str, Any]:
    server = RunningServer(tmp / "server", None).start()
    try:
        with server.client() as admin:
            admin.post("/api/v1/teams", json={"metadata": {"name": "bench"}}).raise_for_status()
            samples = []
            k = None
            for i in range(rounds):
                name = f"c{i}"
                start = time.perf_counter()
                admin.post(
                    "/api/v1/teams/bench/clusters",
                    json={"kind": "Cluster", "metadata": {"name": name}},
                ).raise_for_status()
                answer = admin.post(f"/k8s/bench/{name}/kled/token", json={}).json()
                config = _kubeconfig(answer, "bench", name, tmp / f"{name}.kubeconfig")
                k = Kubectl(binary, config, tmp / "home")
                assert "namespace/default" in k.ok("get", "ns", "-o", "name").split()
                samples.append(time.perf_counter() - start)
            assert k is not None
            alone = []
            for _ in range(rounds):
                start = time.perf_counter()
                k.ok("get", "ns")
                alone.append(time.perf_counter() - start)
        return {"create_to_first_get_ns": _summary(samples), "kubectl_alone": _summary(alone)}
    finally:
        server.stop()


def get_pods_1000(rounds: int, binary: Path, tmp: Path, count: int = 1000) -> dict[str, Any]:
    server = RunningServer(tmp / "server", None).start()
    try:
        with server.client() as admin:
            admin.post("/api/v1/teams", json={"metadata": {"name": "bench"}}).raise_for_status()
            admin.post(
                "/api/v1/teams/bench/clusters",
                json={"kind": "Cluster", "metadata": {"name": "big"}},
            ).raise_for_status()
            pods = "/k8s/bench/big/api/v1/namespaces/default/pods"
            for i in range(count):
                pod = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"pod-{i:04d}", "labels": {"app": "bench"}},
                    "spec": {"containers": [{"name": "main", "image": "localhost/kled-test"}]},
                }
                admin.post(pods, json=pod).raise_for_status()
            answer = admin.post("/k8s/bench/big/kled/token", json={}).json()
        k = Kubectl(binary, _kubeconfig(answer, "bench", "big", tmp / "big.kc"), tmp / "home")
        out: dict[str, Any] = {"pods": count}
        for label, args in (("table", ()), ("json", ("-o", "json"))):
            samples = []
            for _ in range(rounds):
                start = time.perf_counter()
                text = k.ok("get", "pods", *args)
                samples.append(time.perf_counter() - start)
            assert "pod-0999" in text or count < 1000
            out[f"kubectl_get_pods_{label}"] = _summary(samples)
        return {"get_pods_1000": out}
    finally:
        server.stop()


def _deployment(marker: str) -> str:
    from agentlab import MARKER_VAR

    container = {
        "name": "web",
        "image": "python:3",
        "command": [sys.executable, "-m", "http.server", "8080"],
        "env": [{"name": MARKER_VAR, "value": marker}],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
    }
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"kled.io/runtime": "process"}},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [container]},
                },
            },
        }
    )


def apply_to_ready(rounds: int, binary: Path, tmp: Path) -> dict[str, Any]:
    from agentlab import eventually, lab_mesh

    with lab_mesh(tmp, 1, "kubebench") as mesh:
        mesh.start_agent(1)
        mesh.team("a", "100.98.0.0/16")
        mesh.api("POST", "/api/v1/teams/a/clusters", {"kind": "Cluster", "metadata": {"name": "c"}})
        answer = mesh.api("POST", "/k8s/a/c/kled/token", {})
        k = Kubectl(
            binary, _kubeconfig(answer, "a", "c", tmp / "kc"), tmp / "home", mesh.lab.host(2)
        )
        manifest = tmp / "web.json"
        manifest.write_text(_deployment(mesh.marker))

        def ready_pods() -> int:
            pods = json.loads(k.ok("get", "pods", "-o", "json"))["items"]
            return sum(
                1
                for p in pods
                for c in p["status"].get("conditions") or []
                if c["type"] == "Ready" and c["status"] == "True"
            )

        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            k.ok("apply", "-f", str(manifest))
            while ready_pods() < 3:
                time.sleep(0.05)
            samples.append(time.perf_counter() - start)
            k.ok("delete", "-f", str(manifest))
            eventually(lambda: not mesh.replicas(), "the replicas stopped")
        return {"apply_to_ready_3_replicas": _summary(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    binary = kubectl_binary()
    if binary is None:
        print(json.dumps({"skipped": "kubectl is not on the PATH"}))
        return
    result: dict[str, Any] = {"bench": "cluster"}
    with tempfile.TemporaryDirectory(prefix="kled-bench-cluster-") as folder:
        tmp = Path(folder)
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        (tmp / "c").mkdir()
        result.update(create_to_first_get_ns(5 if args.quick else 20, binary, tmp / "a"))
        result.update(get_pods_1000(3 if args.quick else 10, binary, tmp / "c"))
        result.update(apply_to_ready(2 if args.quick else 5, binary, tmp / "b"))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
