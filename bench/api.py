"""API throughput and latency: get, list (100 items) and apply on 10,000 stored resources.

Runs a real control plane in a subprocess (so the load generator does not share its
interpreter) on SQLite and on PostgreSQL (when reachable), seeds 10,000 apps, then drives it
with 16 concurrent clients. Prints one JSON document on stdout.

    python bench/api.py [--resources 10000] [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def seed(data_dir: Path, database: str, count: int) -> None:
    """Write the resources straight through the store: the benchmark is of reads and applies."""
    from kled.store.cipher import SecretCipher
    from kled.store.database import Database
    from kled.store.objects import Store

    db = await Database.open(database)
    store = Store(db, SecretCipher.from_data_dir(data_dir))
    await store.create({"kind": "Team", "metadata": {"name": "bench"}, "spec": {}})
    for n in range(100):
        env = {"kind": "Environment", "metadata": {"name": f"env-{n:02d}", "team": "bench"}}
        await store.create({**env, "spec": {}})
    sem = asyncio.Semaphore(8)

    async def one(n: int) -> None:
        async with sem:
            await store.create(app_doc(f"app-{n:05d}", env=f"env-{n % 100:02d}"))

    await asyncio.gather(*(one(n) for n in range(count)))
    await db.close()


def app_doc(name: str, env: str = "dev", replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": name, "team": "bench", "environment": env, "labels": {"b": "1"}},
        "spec": {
            "runtime": "process",
            "command": ["sleep", "1"],
            "args": [],
            "replicas": replicas,
            "env": {},
            "envFrom": [],
            "ports": [],
            "resources": {},
            "nodeSelector": {},
            "restartPolicy": "Always",
        },
        "status": {},
    }


async def drive(
    url: str, token: str, requests: int, concurrency: int, make: Any
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for n in counter:
            method, path, body = make(n)
            start = time.perf_counter()
            r = await client.request(method, path, json=body)
            latencies.append(time.perf_counter() - start)
            if r.status_code >= 400:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:
        began = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


def run_backend(name: str, database: str | None, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        db_url = database or f"sqlite:///{data / 'kled.db'}"
        asyncio.run(seed(data, db_url, args.resources))
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
            # A first start gives every seeded app its service IP before it serves.
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
            seconds_to_ready = round(time.time() - started, 1)
            token = (data / "admin.token").read_text().strip()
            base = "/api/v1/teams/bench/environments"
            n_res = args.resources

            def get_one(n: int) -> tuple[str, str, None]:
                i = (n * 7919) % n_res
                return "GET", f"{base}/env-{i % 100:02d}/apps/app-{i:05d}", None

            def list_env(n: int) -> tuple[str, str, None]:
                return "GET", f"{base}/env-{n % 100:02d}/apps", None

            def apply_one(n: int) -> tuple[str, str, dict[str, Any]]:
                i = n % n_res
                return (
                    "POST",
                    "/api/v1/apply",
                    app_doc(f"app-{i:05d}", env=f"env-{i % 100:02d}", replicas=2 + n),
                )

            c = args.concurrency
            results = {
                "get": asyncio.run(drive(url, token, args.requests, c, get_one)),
                "list_100": asyncio.run(
                    drive(url, token, max(args.requests // 4, 100), c, list_env)
                ),
                "apply": asyncio.run(drive(url, token, args.requests, c, apply_one)),
            }
            return {
                "backend": name,
                "resources": args.resources,
                "concurrency": args.concurrency,
                "first_start_seconds_to_ready": seconds_to_ready,
                **results,
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            server_log.close()


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
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    from servers import postgres_available, postgres_database

    runs = [run_backend("sqlite", None, args)]
    why = postgres_available()
    if why is None:
        with postgres_database() as url:
            runs.append(run_backend("postgresql", url, args))
    else:
        runs.append({"backend": "postgresql", "skipped": why})
    print(json.dumps({"benchmark": "api", "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
