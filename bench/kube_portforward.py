"""``kubectl port-forward`` to a Kled Cluster's pod: what a forwarded connection costs.

The agent lab of the end-to-end tests (tests/e2e/agentlab.py; root needed): the control
plane on one namespace host, an agent on another running one pod (process runtime) that
serves a small page and a 16 MiB file. kubectl runs in the control plane's host:

- ``websocket`` — kubectl 1.32: SPDY/3.1 tunnelled in a WebSocket;
- ``spdy_upgrade`` — kubectl 1.30 (what the PATH's dispatcher runs against this server):
  SPDY/3.1 on the upgraded HTTPS connection.

For each, from the host kubectl runs in: N GETs of the page, each on a fresh connection
(each is a new stream pair, a new exec stream to the agent and a relay process in the
pod), and one download of the file. The peer, in the same run: the same client in the
team's gateway namespace on the pod's node, straight to the pod IP (no forward: the floor
the network sets).

    python bench/kube_portforward.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from kled.cli.clusters import render  # noqa: E402
from kubekit import Kubectl, kubectl_binary  # noqa: E402

#: run in a lab host: N GETs of URL/ on fresh connections, then URL/big.bin once
CLIENT = r"""
import json, sys, time, urllib.request
base, n = sys.argv[1], int(sys.argv[2])
gets = []
for _ in range(n):
    start = time.perf_counter()
    with urllib.request.urlopen(base + "/", timeout=60) as r:
        r.read()
    gets.append(time.perf_counter() - start)
start = time.perf_counter()
with urllib.request.urlopen(base + "/big.bin", timeout=120) as r:
    size = len(r.read())
print(json.dumps({"gets": gets, "download_s": time.perf_counter() - start, "bytes": size}))
"""


def _summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"n": len(samples), "p50_s": round(statistics.median(samples), 4),
            "p99_s": round(p99, 4)}  # fmt: skip


def _measure(netns: str, base: str, n: int) -> dict[str, Any]:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", CLIENT, base, str(n)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    got = json.loads(done.stdout)
    return {
        "get_fresh_connection": _summary(got["gets"]),
        "download_MiB_per_s": round(got["bytes"] / got["download_s"] / (1 << 20), 1),
    }


def _forwarded(k: Kubectl, pod: str, netns: str, n: int) -> dict[str, Any]:
    proc = k.popen("port-forward", f"pod/{pod}", "0:8080")
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        port = 0
        while not port:
            line = lines.get(timeout=60)
            if line.startswith("Forwarding from 127.0.0.1:"):
                port = int(line.split(":", 1)[1].split()[0])
        return _measure(netns, f"http://127.0.0.1:{port}", n)
    finally:
        proc.terminate()
        proc.wait(10)


def run(n: int, tmp: Path) -> dict[str, Any]:
    from agentlab import MARKER_VAR, eventually, lab_mesh

    with lab_mesh(tmp, 1, "kpfbench") as mesh:
        mesh.start_agent(1)
        mesh.team("a", "100.99.0.0/16")
        mesh.api("POST", "/api/v1/teams/a/clusters", {"kind": "Cluster", "metadata": {"name": "c"}})
        answer = mesh.api("POST", "/k8s/a/c/kled/token", {})
        config = tmp / "kc"
        config.write_text(
            render(answer["server"], "a", "c", answer["user"], answer["token"],
                   answer["certificateAuthorityData"])
        )  # fmt: skip
        site = tmp / "site"
        site.mkdir()
        (site / "index.html").write_text("hello\n")
        (site / "big.bin").write_bytes(bytes(range(256)) * 65536)
        container = {
            "name": "web", "image": "python:3",
            "command": [sys.executable, "-m", "http.server", "8080", "--directory", str(site)],
            "env": [{"name": MARKER_VAR, "value": mesh.marker}],
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        }  # fmt: skip
        deployment = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"kled.io/runtime": "process"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [container]}}},
        }  # fmt: skip
        netns = mesh.lab.host(2)
        versions = {"websocket": "1.32", "spdy_upgrade": "1.30"}
        kubectls = {}
        for path, version in versions.items():
            found = kubectl_binary(version)
            if found is not None:
                kubectls[path] = Kubectl(found, config, tmp / f"home-{version}", netns)
        k = next(iter(kubectls.values()))
        k.ok("apply", "-f", "-", stdin=json.dumps(deployment))

        def ready() -> dict[str, Any] | None:
            for pod in json.loads(k.ok("get", "pods", "-o", "json"))["items"]:
                status = pod["status"]
                for c in status.get("conditions") or []:
                    if c["type"] == "Ready" and c["status"] == "True" and status.get("podIP"):
                        return dict(pod)
            return None

        pod = eventually(ready, "a Ready pod")
        result: dict[str, Any] = {}
        for path, kv in kubectls.items():
            result[path] = _forwarded(kv, pod["metadata"]["name"], netns, n)
        time.sleep(0.5)
        peer = f"http://{pod['status']['podIP']}:8080"
        # the team's gateway namespace on the pod's node routes to its pods
        gateway = f"kt-{mesh.lab.host(1)}.a"
        result["peer_direct_from_the_nodes_team_gateway"] = _measure(gateway, peer, n)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    if kubectl_binary() is None:
        print(json.dumps({"skipped": "kubectl is not on the PATH"}))
        return
    with tempfile.TemporaryDirectory(prefix="kled-bench-kpf-") as folder:
        result = {"bench": "kube_portforward", **run(10 if args.quick else 50, Path(folder))}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
