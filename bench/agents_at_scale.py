"""Many simulated agents heartbeating against a control plane of many apps and devices.

On a throwaway PostgreSQL database (127.0.0.1:5432) it seeds ``--apps`` apps (teams of
1,000, as ``bench/api.py`` lays them out) and ``--devices`` devices (teams of 500: a team's
mesh range holds 1,022 addresses) straight into the store, starts ``kled server
--embedded-nats`` in a process of its own, waits for its controllers to settle, then:

1. **no agents** (the peer): ``wrk`` drives ``GET`` of an app, then a list of 100, each for
   ``--seconds``, while psutil samples the control plane's CPU and RSS;
2. starts ``--agents`` simulated agents in **another process** (one asyncio loop, one
   Message Office connection per node, registered with a node token each): every agent reads
   its desired state from the KV bucket, reports each new replica Running once (a status
   report, as a real agent does) and heartbeats every ``--interval`` seconds with its
   replicas' states; waits until every app's replica is placed on a simulated node;
3. **agents**: the same ``wrk`` runs and samples while the agents heartbeat, and the
   heartbeats the control plane handled per second (``kled_agent_messages_total``).

The control plane's CPU is its own process's (``kled server``); its children (nats-server,
policy workers) are reported apart, and so is the agents' process. Prints one JSON document.

    python bench/agents_at_scale.py [--quick] [--apps 10000 --devices 10000 --agents 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api import free_port, run_wrk, seed, settle

DEVICES_PER_TEAM = 500


class Sampler:
    """psutil samples, once a second, of the server's process, its children and the agents'."""

    def __init__(self, server: psutil.Process, agents: psutil.Process | None = None) -> None:
        self.server, self.agents = server, agents
        self.cpu: list[float] = []
        self.children_cpu: list[float] = []
        self.agents_cpu: list[float] = []
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        children = {c.pid: c for c in self.server.children(recursive=True)}
        for p in (self.server, self.agents, *children.values()):
            if p is not None:
                p.cpu_percent()  # the first call only starts the interval
        while not self._stop.wait(1.0):
            self.cpu.append(self.server.cpu_percent())
            self.rss.append(self.server.memory_info().rss)
            spent = 0.0
            for c in children.values():
                with contextlib.suppress(psutil.NoSuchProcess):
                    spent += c.cpu_percent()
            self.children_cpu.append(spent)
            if self.agents is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.agents_cpu.append(self.agents.cpu_percent())

    def summary(self) -> dict[str, Any]:
        def mean(xs: list[float]) -> float:
            return round(sum(xs) / len(xs), 1) if xs else 0.0

        out = {
            "samples": len(self.cpu),
            "server_cpu_percent_mean": mean(self.cpu),
            "server_cpu_percent_max": round(max(self.cpu, default=0.0), 1),
            "server_rss_mib_mean": round(mean([float(r) for r in self.rss]) / 2**20, 1),
            "server_rss_mib_max": round(max(self.rss, default=0) / 2**20, 1),
            "server_children_cpu_percent_mean": mean(self.children_cpu),
        }
        if self.agents is not None:
            out["agents_process_cpu_percent_mean"] = mean(self.agents_cpu)
        return out


def device_docs(count: int) -> list[dict[str, Any]]:
    from kled.resources.kinds import validate

    docs = []
    for t in range(-(-count // DEVICES_PER_TEAM)):
        team = f"devs-{t}"
        docs.append(validate({"kind": "Team", "metadata": {"name": team}, "spec": {}}))
        for i in range(t * DEVICES_PER_TEAM, min(count, (t + 1) * DEVICES_PER_TEAM)):
            doc = {
                "kind": "Device",
                "metadata": {"name": f"dev-{i:05d}", "team": team},
                "spec": {"owner": f"user-{i % 50}", "kind": "laptop"},
            }
            docs.append(validate(doc))
    return docs


def heartbeats_handled(http: httpx.Client) -> float:
    scraped = http.get("/metrics")
    scraped.raise_for_status()
    for line in scraped.text.splitlines():
        if line.startswith('kled_agent_messages_total{kind="heartbeat"}'):
            return float(line.split()[-1])
    return 0.0


def paced_probe(url: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    """GET of an app and list of 100, alternately, at ``--probe-rate`` requests/s (what a
    user sees while the server is not saturated by ``wrk``): p50/p99 of each."""
    from api import BASE, ENVS, PER_TEAM, teams

    times: dict[str, list[float]] = {"get": [], "list_100": []}
    headers = {"Authorization": f"Bearer {token}"}
    period = 1.0 / args.probe_rate
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        began = time.monotonic()
        n = 0
        while time.monotonic() - began < args.seconds:
            i = (n * 7919) % args.apps
            if n % 2 == 0:
                shape = "get"
                path = BASE % (i // PER_TEAM, i % ENVS) + f"/app-{i:05d}"
            else:
                shape = "list_100"
                path = BASE % (n % teams(args.apps), n % ENVS)
            sent = time.perf_counter()
            c.get(path).raise_for_status()
            times[shape].append(time.perf_counter() - sent)
            n += 1
            time.sleep(max(0.0, began + n * period - time.monotonic()))

    def at(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2)

    return {
        shape: {"requests": len(xs), "p50_ms": at(xs, 0.5), "p99_ms": at(xs, 0.99)}
        for shape, xs in times.items()
    }


def measure(
    url: str,
    token: str,
    args: argparse.Namespace,
    sampler: Sampler,
    http: httpx.Client,
    shapes: tuple[str, ...],
) -> dict[str, Any]:
    """CPU, RSS and heartbeats handled/s while ``shapes`` run: ``wrk`` shapes, ``paced``
    (the probe above) or ``idle`` (nothing but what else goes on, for ``--seconds``)."""
    before, began = heartbeats_handled(http), time.monotonic()
    out: dict[str, Any] = {}
    with sampler:
        for shape in shapes:
            if shape == "idle":
                time.sleep(args.seconds)
            elif shape == "paced":
                out["paced"] = paced_probe(url, token, args)
            else:
                out[shape] = run_wrk(url, token, shape, args)
    handled = heartbeats_handled(http) - before
    return {
        **out,
        **sampler.summary(),
        "heartbeats_handled_per_s": round(handled / (time.monotonic() - began), 1),
    }


def count_apps(http: httpx.Client, apps: int) -> dict[str, int]:
    """Apps by phase, over every bench team."""
    phases: dict[str, int] = {}
    for t in range(-(-apps // 1000)):
        cont: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"continue": cont} if cont else {})}
            page = http.get(f"/api/v1/teams/bench-{t}/apps", params=params)
            page.raise_for_status()
            body = page.json()
            for doc in body["items"]:
                phase = str((doc.get("status") or {}).get("phase"))
                phases[phase] = phases.get(phase, 0) + 1
            cont = (body.get("metadata") or {}).get("continue")
            if not cont:
                break
    return phases


def nodes_ready(http: httpx.Client) -> int:
    ready, cont = 0, None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"continue": cont} if cont else {})}
        page = http.get("/api/v1/nodes", params=params)
        page.raise_for_status()
        body = page.json()
        ready += sum((n.get("status") or {}).get("phase") == "Ready" for n in body["items"])
        cont = (body.get("metadata") or {}).get("continue")
        if not cont:
            return ready


def run(database: str, args: argparse.Namespace) -> dict[str, Any]:
    from seeding import write_documents

    root = Path(tempfile.mkdtemp(prefix="kled-bench-agents-"))
    data = root / "server"
    data.mkdir()
    result: dict[str, Any] = {"apps": args.apps, "devices": args.devices, "agents": args.agents}
    began = time.perf_counter()
    asyncio.run(seed(data, database, args.apps))
    asyncio.run(write_documents(data, database, device_docs(args.devices)))
    result["seed_seconds"] = round(time.perf_counter() - began, 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLED_")}
    env["HOME"] = str(root)
    kled = str(Path(sys.executable).parent / "kled")
    log = (root / "server.log").open("ab")
    server = subprocess.Popen(
        [kled, "server", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
         "--database", database, "--embedded-nats", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    agents: subprocess.Popen[bytes] | None = None
    http = httpx.Client(base_url=url, timeout=60)
    try:
        started = time.monotonic()
        while True:
            try:
                if http.get("/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() - started > 900:
                tail = (root / "server.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"bench/agents_at_scale.py: the server did not start:\n{tail}")
            time.sleep(0.3)
        result["seconds_to_ready"] = round(time.monotonic() - started, 1)
        result["seconds_to_settled"] = round(time.monotonic() - started + settle(url), 1)
        token = (data / "admin.token").read_text().strip()
        http.headers["Authorization"] = f"Bearer {token}"
        proc = psutil.Process(server.pid)
        result["no_agents"] = {
            "quiet": measure(url, token, args, Sampler(proc), http, ("idle",)),
            "paced": measure(url, token, args, Sampler(proc), http, ("paced",)),
            "wrk": measure(url, token, args, Sampler(proc), http, ("get", "list_100")),
        }

        progress = root / "agents.json"
        config = {"url": url, "token": token, "agents": args.agents,
                  "interval": args.interval, "progress": str(progress)}  # fmt: skip
        (root / "agents-config.json").write_text(json.dumps(config))
        with (root / "agents.log").open("ab") as agents_log:
            agents = subprocess.Popen(
                [sys.executable, __file__, "--agents-child", str(root / "agents-config.json")],
                stdout=agents_log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        placing = time.monotonic()
        state: dict[str, Any] = {}
        while time.monotonic() - placing < args.warmup:
            if agents.poll() is not None:
                tail = (root / "agents.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"bench/agents_at_scale.py: the agents stopped:\n{tail}")
            if progress.exists():
                state = json.loads(progress.read_text() or "{}")
                if state.get("replicas", 0) >= args.apps:
                    break
            time.sleep(1)
        result["seconds_to_every_replica_on_an_agent"] = (
            round(time.monotonic() - placing, 1) if state.get("replicas", 0) >= args.apps else None
        )
        result["replicas_on_agents_after_warmup"] = state.get("replicas", 0)
        time.sleep(3 * args.interval)  # their first heartbeats and status reports go in
        agents_proc = psutil.Process(agents.pid)
        result["agents_heartbeating"] = {
            shape[0]: measure(url, token, args, Sampler(proc, agents_proc), http, shape[1])
            for shape in (("quiet", ("idle",)), ("paced", ("paced",)),
                          ("wrk", ("get", "list_100")))
        }  # fmt: skip
        result["nodes_ready"] = nodes_ready(http)
        result["app_phases_after"] = count_apps(http, args.apps)
        agents.send_signal(signal.SIGTERM)
        agents.wait(60)
        final = json.loads(progress.read_text() or "{}")
        result["agents_sent"] = {k: final.get(k) for k in ("heartbeats", "status_reports")}
        peer, loaded = result["no_agents"], result["agents_heartbeating"]

        def p99(phase: dict[str, Any], how: str, shape: str) -> float:
            found = phase[how]["paced"][shape] if how == "paced" else phase[how][shape]
            return float(found["p99_ms"])

        result["p99_ratio_with_to_without_agents"] = {
            f"{how}_{shape}": round(p99(loaded, how, shape) / max(p99(peer, how, shape), 0.01), 2)
            for how in ("paced", "wrk")
            for shape in ("get", "list_100")
        }
        return result
    finally:
        http.close()
        for p in (agents, server):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        log.close()
        if args.keep:
            print(f"data and logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


# -- the simulated agents (a process of their own) --------------------------------------


async def simulate(config: dict[str, Any]) -> None:
    from kled.bus.office import ConnectOptions, MessageOffice
    from kled.resources.hoststate import (
        Capacity,
        NodeHeartbeat,
        ReplicaSpec,
        ReplicaState,
        ReplicaStatus,
        ReplicaStatusReport,
    )

    interval = float(config["interval"])
    progress = Path(config["progress"])
    capacity = Capacity(cpu_millicores=64_000, memory_bytes=256 * 2**30)
    started_at = datetime.now(UTC)
    known: dict[str, dict[str, ReplicaSpec]] = {}
    sent = {"heartbeats": 0, "status_reports": 0}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    offices: list[tuple[str, MessageOffice]] = []
    headers = {"Authorization": f"Bearer {config['token']}"}
    async with httpx.AsyncClient(base_url=config["url"], headers=headers, timeout=60) as c:
        gate = asyncio.Semaphore(8)

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            """POST, again after a 503 (the server's "try again"); anything else fails."""
            for _ in range(30):
                answer = await c.post(path, json=body)
                if answer.status_code != 503:
                    break
                print(f"{path}: 503 {answer.text[:300]}", file=sys.stderr)
                await asyncio.sleep(1)
            if answer.is_error:
                raise SystemExit(f"{path}: {answer.status_code} {answer.text[:500]}")
            made: dict[str, Any] = answer.json()
            return made

        async def register(i: int) -> None:
            async with gate:
                made = await post("/api/v1/node-tokens", {"ttl": "2h"})
                body = {"token": made["token"], "name": f"sim-{i:04d}"}
                r = await post("/api/v1/nodes/register", body)
                options = ConnectOptions(url=r["nats_url"], user=r["nats_user"],
                                         password=r["nats_password"], node=r["node"],
                                         name=f"sim-{i:04d}")  # fmt: skip
                office = MessageOffice(options)
                await office.connect()
                offices.append((r["node"], office))

        await asyncio.gather(*(register(i) for i in range(int(config["agents"]))))

    def status(spec: ReplicaSpec) -> ReplicaStatus:
        return ReplicaStatus(id=spec.id, state=ReplicaState.RUNNING, pid=10_000,
                             started_at=started_at, generation=spec.generation,
                             ready=True)  # fmt: skip

    async def agent(node: str, office: MessageOffice, offset: float) -> None:
        await asyncio.sleep(offset)  # spread over the interval, as independent agents are
        mine: dict[str, ReplicaSpec] = {}
        known[node] = mine
        last_read = -1e9
        while not stop.is_set():
            tick = time.monotonic()
            if tick - last_read >= 2 * interval:  # the real agent watches; a read will do
                last_read = tick
                desired = await office.get_desired(node)
                now = {r.id: r for r in (desired.replicas if desired else [])}
                for rid in now.keys() - mine.keys():
                    report = ReplicaStatusReport(node=node, replica=status(now[rid]))
                    await office.publish_status(report)
                    sent["status_reports"] += 1
                mine.clear()
                mine.update(now)
            specs = sorted(mine.values(), key=lambda s: s.id)
            hb = NodeHeartbeat(
                node=node,
                capacity=capacity,
                capabilities=["process"],
                replicas=[status(s) for s in specs],
                apps=sorted({s.app_uid for s in specs if s.app_uid}),
                agent_version="bench",
            )
            await office.publish_heartbeat(hb)
            sent["heartbeats"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval - (time.monotonic() - tick))

    async def report() -> None:
        while not stop.is_set():
            state = {**sent, "replicas": sum(len(m) for m in known.values())}
            progress.write_text(json.dumps(state))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        progress.write_text(json.dumps({**sent, "replicas": sum(len(m) for m in known.values())}))

    count = len(offices)
    await asyncio.gather(
        report(),
        *(agent(n, o, interval * i / count) for i, (n, o) in enumerate(offices)),
    )
    for _, office in offices:
        await office.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between heartbeats")
    parser.add_argument("--seconds", type=int, default=15, help="wrk's duration per shape")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--probe-rate", type=float, default=40, help="paced requests/s")
    parser.add_argument("--warmup", type=float, default=900, help="most seconds to place apps")
    parser.add_argument("--quick", action="store_true", help="1,000 apps and devices, 100 agents")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs")
    parser.add_argument("--agents-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agents_child:
        import logging

        logging.basicConfig(level=logging.ERROR)
        asyncio.run(simulate(json.loads(Path(args.agents_child).read_text())))
        return
    if args.quick:
        args.apps, args.devices, args.agents = 1_000, 1_000, 100
    if shutil.which("wrk") is None:
        raise SystemExit("bench/agents_at_scale.py needs wrk: apt-get install wrk")
    from servers import postgres_available, postgres_database

    why = postgres_available()
    if why is not None:
        raise SystemExit(f"bench/agents_at_scale.py needs PostgreSQL: {why}")
    with postgres_database() as url:
        result = run(url, args)
    load = os.getloadavg()
    out = {"benchmark": "agents_at_scale", "backend": "postgresql", "cpus": os.cpu_count(),
           "load_average_1m_at_end": round(load[0], 1), **result}  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
