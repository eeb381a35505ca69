"""API throughput and latency, driven by ``wrk``: /healthz, get, list of 100, apply.

Seeds a number of apps straight into the database (batch inserts, as a restore would) —
teams of 1,000 apps, each with 10 environments of 100 —
starts a real control plane in a subprocess, times its first start until ``/readyz`` and
until its controllers have caught up (no write for 3 s),
then drives it with ``wrk`` (a C load generator in a process of its own, so the load's CPU
is not the server's interpreter) for a fixed time per request shape:

- ``healthz``: the framework's own ceiling on this machine, in the same run;
- ``get``: one app, a different one each request;
- ``list_100``: the 100 apps of one environment (fewer with under 1,000 apps);
- ``apply``: a changed app each request (a label counts up): only 2xx answers count as
  writes, refused ones are reported apart;
- ``apply_unchanged``: the same document again (answers ``unchanged``);
- ``apply_batch_500``: 500 changed apps in one request (a ``List``), by httpx, one at a
  time: documents configured per second;
- ``watch_fanout``: ``--watchers`` (1,000) watches of one environment's apps open in this
  process (httpx), then one apply: how many had its event, and after how long (p50/p99).

Each on SQLite and on PostgreSQL (a throwaway database at 127.0.0.1:5432, when reachable).
Prints one JSON document with requests/s, p50/p99 and the ratios get/healthz and
list/healthz.

    python bench/api.py [--apps 2000] [--seconds 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

#: a team's service range holds 1,022 addresses: apps are spread over teams of 1,000, each
#: with 10 environments (of 100 apps each, when the team is full)
PER_TEAM = 1000
ENVS = 10


def teams(apps: int) -> int:
    return max(1, -(-apps // PER_TEAM))


def place(i: int) -> tuple[str, str, str]:
    """Team, environment and name of app number ``i``."""
    return f"bench-{i // PER_TEAM}", f"env-{i % ENVS}", f"app-{i:05d}"


BASE = "/api/v1/teams/bench-%d/environments/env-%d/apps"

# wrk's Lua: each thread counts answers by class; done() prints one JSON line.
LUA_COMMON = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
ok, refused, failed = 0, 0, 0
function response(status, headers, body)
  if status < 300 then ok = ok + 1 elseif status < 500 then refused = refused + 1
  else failed = failed + 1 end
end
function done(summary, latency, requests)
  local o, r, f = 0, 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); r = r + t:get("refused");
    f = f + t:get("failed") end
  io.write(string.format(
    'WRKJSON {"requests":%d,"seconds":%.3f,"ok":%d,"refused":%d,"failed":%d,' ..
    '"socket_errors":%d,"p50_ms":%.2f,"p99_ms":%.2f}\\n',
    summary.requests, summary.duration / 1e6, o, r, f,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""

LUA_SHAPES = {
    "healthz": """
function request() return wrk.format("GET", "/healthz") end
""",
    "get": """
local n = 0
function request()
  n = n + 1
  local i = (n * 7919 + math.random(0, APPS - 1)) % APPS
  return wrk.format("GET", string.format("BASE/app-%05d", math.floor(i / PER_TEAM), i % ENVS, i))
end
""",
    "list_100": """
local n = 0
function request()
  n = n + 1
  return wrk.format("GET", string.format("BASE", math.random(0, TEAMS - 1), n % ENVS))
end
""",
    "apply": """
wrk.headers["Content-Type"] = "application/json"
local n = 0
local seed = math.random(0, 1000000)
function request()
  n = n + 1
  local i = (n * 7919 + seed) % APPS
  local body = string.format(DOC, string.format("app-%05d", i),
    string.format("bench-%d", math.floor(i / PER_TEAM)), string.format("env-%d", i % ENVS),
    string.format("%d-%d", seed, n))
  return wrk.format("POST", "/api/v1/apply", nil, body)
end
""",
    "apply_unchanged": """
wrk.headers["Content-Type"] = "application/json"
function request()
  local body = string.format(DOC, "app-00000", "bench-0", "env-0", "1")
  return wrk.format("POST", "/api/v1/apply", nil, body)
end
""",
}


def app_doc(name: str, team: str, env: str, gen: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {
            "name": name,
            "team": team,
            "environment": env,
            "labels": {"b": "1", "gen": gen},
        },
        "spec": {
            "runtime": "process",
            "command": ["sleep", "1"],
            "args": [],
            "replicas": 1,
            "env": {},
            "envFrom": [],
            "ports": [],
            "resources": {},
            "nodeSelector": {},
            "restartPolicy": "Always",
        },
    }


def _lua_doc() -> str:
    """The apply body as a Lua format string: name, environment and label filled in."""
    text = json.dumps(app_doc("NAME", "TEAM", "ENV", "GEN"), separators=(",", ":"))
    text = text.replace("%", "%%").replace('"NAME"', '"%s"').replace('"TEAM"', '"%s"')
    text = text.replace('"ENV"', '"%s"')
    return json.dumps(text.replace('"GEN"', '"%s"'))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def seed(data_dir: Path, database: str, count: int) -> float:
    """Write a team, its environments and ``count`` apps in a few large transactions.

    Rows and events are written as the store writes them (one revision each), but many to
    a statement, so that 10,000 apps take seconds, not minutes. Returns the seconds taken.
    """
    from seeding import write_documents

    began = time.perf_counter()
    docs: list[dict[str, Any]] = []
    for t in range(teams(count)):
        team = f"bench-{t}"
        docs.append({"kind": "Team", "metadata": {"name": team}, "spec": {}})
        for e in range(ENVS):
            env = {"kind": "Environment", "metadata": {"name": f"env-{e}", "team": team}}
            docs.append({**env, "spec": {}})
    for n in range(count):
        team, env, name = place(n)
        docs.append(app_doc(name, team, env))
    await write_documents(data_dir, database, docs)
    return time.perf_counter() - began


def run_wrk(url: str, token: str, shape: str, args: argparse.Namespace) -> dict[str, Any]:
    script = LUA_COMMON + LUA_SHAPES[shape].replace("APPS", str(args.apps)).replace(
        "TEAMS", str(teams(args.apps))
    ).replace("PER_TEAM", str(PER_TEAM)).replace("ENVS", str(ENVS)).replace("BASE", BASE).replace(
        "DOC", _lua_doc()
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{args.connections}",
                f"-d{args.seconds}s",
                "--timeout",
                "10s",
                "-H",
                f"Authorization: Bearer {token}",
                "-s",
                f.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    lines = [x for x in out.splitlines() if x.startswith("WRKJSON ")]
    if not lines:
        raise SystemExit(f"wrk printed no summary for {shape}:\n{out}")
    line = lines[0]
    raw = json.loads(line[len("WRKJSON ") :])
    seconds = raw["seconds"] or 1.0
    return {
        "requests_per_s": round(raw["requests"] / seconds, 1),
        "ok_per_s": round(raw["ok"] / seconds, 1),
        "refused": raw["refused"],
        "failed": raw["failed"] + raw["socket_errors"],
        "p50_ms": raw["p50_ms"],
        "p99_ms": raw["p99_ms"],
    }


def settle(url: str, quiet: float = 3.0, most: float = 300.0) -> float:
    """Wait until the controllers have caught up (no write for ``quiet`` seconds).

    A server may answer before its controllers have gone through every app (service IPs,
    status): measured while they still write, reads and applies would compete with them.
    """
    began = time.time()
    last, since = -1, time.time()
    while time.time() - began < most:
        revision = httpx.get(url + "/readyz", timeout=10).json().get("revision")
        if revision != last:
            last, since = revision, time.time()
        elif time.time() - since >= quiet:
            break
        time.sleep(0.5)
    return time.time() - began - quiet


def run_backend(name: str, database: str | None, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        db_url = database or f"sqlite:///{data / 'kled.db'}"
        seeded = asyncio.run(seed(data, db_url, args.apps))
        port = free_port()
        env = {
            **os.environ,
            "KLED_DATA_DIR": str(data),
            "KLED_DATABASE": db_url,
            "KLED_LISTEN": f"127.0.0.1:{port}",
        }
        server_log = (Path(tmp) / "server.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            env=env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            started = time.time()
            while True:
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
                if proc.poll() is not None or time.time() - started > 900:
                    tail = (Path(tmp) / "server.log").read_text(errors="replace")[-2000:]
                    raise SystemExit(f"the {name} server did not become ready:\n{tail}")
            ready = round(time.time() - started, 1)
            settled = round(ready + settle(url), 1)
            token = (data / "admin.token").read_text().strip()
            shapes = {shape: run_wrk(url, token, shape, args) for shape in LUA_SHAPES}
            shapes["apply_batch_500"] = batch_apply(url, token, args)
            if args.watchers:
                shapes["watch_fanout"] = asyncio.run(fan_out(url, token, args.watchers))
            ceiling = shapes["healthz"]["requests_per_s"] or 1.0
            return {
                "backend": name,
                "apps": args.apps,
                "connections": args.connections,
                "seconds_per_shape": args.seconds,
                "seed_seconds": round(seeded, 1),
                "first_start_seconds_to_ready": ready,
                "first_start_seconds_to_settled": settled,
                **shapes,
                "ratio_get_to_healthz": round(shapes["get"]["ok_per_s"] / ceiling, 3),
                "ratio_list_to_healthz": round(shapes["list_100"]["ok_per_s"] / ceiling, 3),
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            server_log.close()


def batch_apply(url: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    """``apply`` of 500 changed apps in one request (a List), again for ``args.seconds``."""
    count = min(500, args.apps)
    rounds: list[float] = []
    written = 0
    deadline = time.perf_counter() + args.seconds
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
        while time.perf_counter() < deadline or not rounds:
            gen = str(len(rounds) + 2)
            docs = []
            for i in range(count):
                team, env, name = place(i)
                docs.append(app_doc(name, team, env, gen=gen))
            started = time.perf_counter()
            r = c.post("/api/v1/apply", json={"kind": "List", "items": docs}, timeout=300)
            rounds.append(time.perf_counter() - started)
            r.raise_for_status()
            written += sum(x.get("result") == "configured" for x in r.json()["results"])
    total = sum(rounds)
    return {
        "documents_per_request": count,
        "requests": len(rounds),
        "configured_per_s": round(written / total, 1),
        "p50_request_s": round(sorted(rounds)[len(rounds) // 2], 2),
    }


async def fan_out(url: str, token: str, watchers: int) -> dict[str, Any]:
    """``watchers`` watches of one environment's apps, one write: when each one had it."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=watchers + 4, max_keepalive_connections=watchers + 4)
    timeout = httpx.Timeout(120, read=None)
    marker = f"fanout-{os.getpid()}-{time.time_ns()}"
    path = BASE % (0, 0)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout
    ) as c:
        since = (await c.get("/readyz")).json()["revision"]
        watching = 0
        arrived: list[float] = []

        async def watch() -> None:
            nonlocal watching
            params = {"watch": "true", "resourceVersion": str(since)}
            async with c.stream("GET", path, params=params) as r:
                async for line in r.aiter_lines():
                    if line.startswith(": watching"):
                        watching += 1
                    elif line.startswith("data:") and marker in line:
                        arrived.append(time.perf_counter())
                        return

        tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
        opening = time.perf_counter()
        while watching < watchers and time.perf_counter() - opening < 300:
            await asyncio.sleep(0.05)
        opened = time.perf_counter() - opening
        team, env, name = place(0)
        written = time.perf_counter()
        r = await c.post("/api/v1/apply", json=app_doc(name, team, env, gen=marker))
        r.raise_for_status()
        await asyncio.wait(tasks, timeout=120)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    delays = sorted((t - written) * 1000 for t in arrived)

    def at(q: float) -> float | None:
        return round(delays[min(len(delays) - 1, int(q * len(delays)))], 1) if delays else None

    return {
        "watchers": watchers,
        "watching": watching,
        "seconds_to_open_all": round(opened, 1),
        "delivered": len(delays),
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": round(delays[-1], 1) if delays else None,
    }


def serve() -> None:
    from kled.api.server import ControlPlane
    from kled.settings import ServerSettings

    async def main() -> None:
        plane = ControlPlane(ServerSettings())
        await plane.open()
        plane.bind()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, plane.stop)
        try:
            await plane.serve()
        finally:
            await plane.close()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apps", type=int, default=2_000, help="apps stored before the run")
    parser.add_argument("--seconds", type=int, default=10, help="wrk's duration per shape")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--watchers", type=int, default=1000, help="watches open at one write (0: none)"
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if shutil.which("wrk") is None:
        raise SystemExit("bench/api.py needs wrk: apt-get install wrk (make deps does)")
    from servers import postgres_available, postgres_database

    runs = []
    if args.backend in ("sqlite", "both"):
        runs.append(run_backend("sqlite", None, args))
    if args.backend in ("postgresql", "both"):
        why = postgres_available()
        if why is None:
            with postgres_database() as url:
                runs.append(run_backend("postgresql", url, args))
        else:
            runs.append({"backend": "postgresql", "skipped": why})
    print(json.dumps({"benchmark": "api", "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
