"""Apps on a local node: apply→Running latency, agent memory, Message Office throughput.

Runs ``kled server --embedded-nats`` and one ``kled agent`` as processes of their own (so the
load generator shares no interpreter with them), then measures:

- apply→Running, p50/p99: one app at a time, and 100 apps applied at once (each app's
  time from its own apply to the first status showing it Running);
- the agent's RSS idle and with 200 replicas (``sleep`` processes);
- heartbeats per second the control plane takes in from 50 simulated agents (50 Message
  Office clients publishing straight to NATS with their own node credentials);
- ``podman run`` of a tiny busybox image beside apply→Running of the same image as a
  container app (skipped with the reason when podman is unusable).

Prints one JSON document on stdout. ``python bench/agent.py [--single 20]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

TEAM = "bench"
MARKER = random.randint(5_000_000, 5_999_999)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index] * 1000, 1)


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50_ms": percentile(values, 0.5),
        "p99_ms": percentile(values, 0.99),
        "max_ms": round(max(values) * 1000, 1),
    }


def wait(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.01)
    raise SystemExit(f"bench/agent.py: {what} did not happen within {timeout:.0f}s")


class Bench:
    def __init__(self, root: Path, network: str) -> None:
        self.root = root
        self.network = network
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KLED_")}
        self.env["HOME"] = str(root)
        self.server: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def start(self) -> None:
        kled = [str(Path(sys.executable).parent / "kled")]
        with open(self.root / "server.log", "ab") as log:
            self.server = subprocess.Popen(
                [*kled, "server", "--data-dir", str(self.root / "server"), "--listen",
                 f"127.0.0.1:{self.port}", "--embedded-nats", "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )  # fmt: skip
        wait(self._healthy, "the server answering", 60)
        # It serves before its controllers (the Message Office) run: agents join after.
        wait(self._settled, "the server's controllers started", 120)
        token = (self.root / "server" / "admin.token").read_text().strip()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.post("/api/v1/teams", {"kind": "Team", "metadata": {"name": TEAM}})
        self.post(
            f"/api/v1/teams/{TEAM}/environments",
            {"kind": "Environment", "metadata": {"name": "dev", "team": TEAM}},
        )
        join = self.post("/api/v1/node-tokens", {"ttl": "1h"})["token"]
        with open(self.root / "agent.log", "ab") as log:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "kled.agent", "--data-dir", str(self.root / "agent"),
                 "--name", "local", "--server", self.url, "--token", join,
                 "--log-level", "INFO", "--network", self.network],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )  # fmt: skip
        wait(lambda: self.node_phase("local") == "Ready", "the local node Ready", 60)

    def _settled(self) -> bool:
        return "Message Office" in (self.root / "server.log").read_text(errors="replace")

    def _healthy(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def post(self, path: str, body: Any) -> Any:
        response = self.http.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def node_phase(self, name: str) -> str | None:
        response = self.http.get(f"/api/v1/nodes/{name}")
        if response.status_code != 200:
            return None
        return (response.json().get("status") or {}).get("phase")

    def apps(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.http.get(
            f"/api/v1/teams/{TEAM}/environments/dev/apps", params={"limit": 1000}
        ).json()["items"]
        return items

    def apply_app(self, name: str, replicas: int = 1, **spec: Any) -> float:
        command = ["sh", "-c", f"exec sleep {MARKER}"]
        doc = {
            "apiVersion": "kled.io/v1",
            "kind": "App",
            "metadata": {"name": name, "team": TEAM, "environment": "dev"},
            "spec": {"command": command, "replicas": replicas, **spec},
        }
        started = time.monotonic()
        self.post(f"/api/v1/teams/{TEAM}/environments/dev/apps", doc)
        return started

    def is_running(self, name: str) -> bool:
        doc = self.http.get(f"/api/v1/teams/{TEAM}/environments/dev/apps/{name}").json()
        return (doc.get("status") or {}).get("phase") == "Running"

    def delete_all(self) -> None:
        for doc in self.apps():
            name = doc["metadata"]["name"]
            self.http.delete(f"/api/v1/teams/{TEAM}/environments/dev/apps/{name}")
        wait(lambda: not self.apps(), "every app deleted")
        wait(lambda: not sleepers(), "every replica stopped")

    def close(self) -> None:
        for proc in (self.agent, self.server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for p in sleepers():
            p.kill()
        self.http.close()


def sleepers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if (p.info["cmdline"] or [])[-2:] == ["sleep", str(MARKER)]:
            if p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def single_latency(bench: Bench, count: int) -> dict[str, Any]:
    times = []
    for i in range(count):
        started = bench.apply_app(f"one-{i}")
        wait(lambda i=i: bench.is_running(f"one-{i}"), f"one-{i} Running")
        times.append(time.monotonic() - started)
    bench.delete_all()
    return summary(times)


def burst_latency(bench: Bench, count: int) -> dict[str, Any]:
    with ThreadPoolExecutor(8) as pool:
        starts = dict(
            zip(
                range(count),
                pool.map(lambda i: bench.apply_app(f"many-{i}"), range(count)),
                strict=True,
            )
        )
    done: dict[int, float] = {}
    deadline = time.monotonic() + 180
    while len(done) < count and time.monotonic() < deadline:
        for doc in bench.apps():
            index = int(doc["metadata"]["name"].split("-")[1])
            if index not in done and (doc.get("status") or {}).get("phase") == "Running":
                done[index] = time.monotonic() - starts[index]
        time.sleep(0.02)
    result = summary(list(done.values()))
    result["not_running"] = count - len(done)
    bench.delete_all()
    return result


def agent_rss(bench: Bench, replicas: int) -> dict[str, Any]:
    assert bench.agent is not None
    agent = psutil.Process(bench.agent.pid)
    idle = agent.memory_info().rss
    bench.apply_app("many", replicas=replicas)
    wait(lambda: bench.is_running("many"), f"{replicas} replicas Running", 180)
    time.sleep(2)  # a couple of heartbeats with every replica in them
    loaded = agent.memory_info().rss
    bench.delete_all()
    return {
        "idle_mib": round(idle / 2**20, 1),
        f"with_{replicas}_replicas_mib": round(loaded / 2**20, 1),
        "replica_processes": replicas,
    }


async def heartbeat_rate(bench: Bench, agents: int, per_agent: int) -> dict[str, Any]:
    """Heartbeats/s the control plane applies, published by ``agents`` Office clients."""
    from kled.bus.office import ConnectOptions, MessageOffice
    from kled.resources.hoststate import Capacity, NodeHeartbeat

    offices: list[tuple[str, MessageOffice]] = []
    async with httpx.AsyncClient(base_url=bench.url, timeout=30) as client:
        client.headers["Authorization"] = bench.http.headers["Authorization"]
        for i in range(agents):
            token = (await client.post("/api/v1/node-tokens", json={"ttl": "1h"})).json()["token"]
            body = {"token": token, "name": f"sim-{i}"}
            reg = (await client.post("/api/v1/nodes/register", json=body)).json()
            office = MessageOffice(
                ConnectOptions(
                    url=reg["nats_url"],
                    user=reg["nats_user"],
                    password=reg["nats_password"],
                    node=reg["node"],
                    name=f"sim-{i}",
                )
            )
            await office.connect()
            offices.append((reg["node"], office))
    capacity = Capacity(cpu_millicores=4000, memory_bytes=8 * 2**30)
    base = datetime.now(UTC)

    async def publish(node: str, office: MessageOffice) -> None:
        for k in range(1, per_agent + 1):
            at = base + timedelta(milliseconds=k)
            await office.publish_heartbeat(NodeHeartbeat(node=node, time=at, capacity=capacity))

    def handled() -> float:
        """Heartbeats the control plane has handled (its /metrics counter)."""
        scraped = bench.http.get("/metrics")  # as the server administrator: every series
        scraped.raise_for_status()
        for line in scraped.text.splitlines():
            if line.startswith('kled_agent_messages_total{kind="heartbeat"}'):
                return float(line.split()[-1])
        return 0.0

    before = handled()
    started = time.monotonic()
    await asyncio.gather(*(publish(node, office) for node, office in offices))
    published = time.monotonic() - started

    def applied() -> bool:
        # The local agent heartbeats too: at least every simulated one handled.
        return handled() - before >= agents * per_agent

    await asyncio.to_thread(wait, applied, "every simulated heartbeat applied", 180)
    elapsed = time.monotonic() - started
    for _, office in offices:
        await office.close()
    total = agents * per_agent
    return {
        "agents": agents,
        "messages": total,
        "published_per_s": round(total / published),
        "applied_per_s": round(total / elapsed),
    }


def podman_compare(bench: Bench) -> dict[str, Any]:
    podman, busybox = shutil.which("podman"), shutil.which("busybox")
    if podman is None or busybox is None or os.geteuid() != 0:
        return {"skipped": "needs root, podman and busybox-static"}
    from kled.agent.runtime.container import engine_flags

    flags, run_flags = engine_flags(podman)
    rootfs = bench.root / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "sleep"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    with tarfile.open(bench.root / "rootfs.tar", "w") as tar:
        tar.add(rootfs, arcname=".")
    tag = f"localhost/kled-bench-box:{MARKER}"
    done = subprocess.run([podman, *flags, "import", str(bench.root / "rootfs.tar"), tag],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        return {"skipped": f"podman import failed: {done.stderr.strip()[:200]}"}
    try:
        runs = []
        for i in range(3):
            name = f"kled-bench-{MARKER}-{i}"
            started = time.monotonic()
            ran = subprocess.run(
                [podman, *flags, "run", "-d", "--name", name, *run_flags, tag,
                 "sleep", str(MARKER)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if ran.returncode != 0:
                return {"skipped": f"podman run failed: {ran.stderr.strip()[:200]}"}
            runs.append(time.monotonic() - started)
            subprocess.run([podman, *flags, "rm", "-f", "-t", "0", name],
                           capture_output=True, check=False)  # fmt: skip
        applies = []
        for i in range(3):
            started = bench.apply_app(f"box-{i}", runtime="container", image=tag)
            wait(lambda i=i: bench.is_running(f"box-{i}"), f"box-{i} Running", 120)
            applies.append(time.monotonic() - started)
        bench.delete_all()
        return {"podman_run_d": summary(runs), "apply_to_running_container": summary(applies)}
    finally:
        # the agent removes its containers a moment after the app is gone: until then the
        # image is in use
        for _ in range(60):
            rmi = [podman, *flags, "rmi", "-f", tag]
            if subprocess.run(rmi, capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--single", type=int, default=20, help="apps applied one at a time")
    parser.add_argument("--burst", type=int, default=100, help="apps applied at once")
    parser.add_argument("--replicas", type=int, default=200, help="replicas for the RSS line")
    parser.add_argument("--agents", type=int, default=50, help="simulated agents")
    parser.add_argument("--heartbeats", type=int, default=40, help="heartbeats per agent")
    parser.add_argument(
        "--network", default="off", help="the agent's team meshes: off (default), auto or on"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data and logs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the simulated agents' disconnects are expected
    root = Path(tempfile.mkdtemp(prefix="kled-bench-agent-"))
    bench = Bench(root, args.network)
    result: dict[str, Any] = {
        "benchmark": "agent",
        "cpus": os.cpu_count(),
        "agent_network": args.network,
    }
    try:
        bench.start()
        result["apply_to_running_1_app"] = single_latency(bench, args.single)
        result[f"apply_to_running_{args.burst}_apps"] = burst_latency(bench, args.burst)
        result["agent_rss"] = agent_rss(bench, args.replicas)
        result["container"] = podman_compare(bench)
        result["control_plane_heartbeats"] = asyncio.run(
            heartbeat_rate(bench, args.agents, args.heartbeats)
        )
    finally:
        bench.close()
        if args.keep:
            print(f"data and logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
