"""Placement of many apps applied at once: one ``kled apply`` batch → every app Running.

Runs ``kled server --embedded-nats`` and one real ``kled agent`` (process runtime) as
processes of their own, then, for ``--apps`` apps (default 100, one replica each, a
``sleep``):

- **batch**: all of them in one ``POST /api/v1/apply`` of a ``List`` (what ``kled apply
  -f`` of a 100-document file sends); each app's time is from that request's start to the
  first status showing it ``Running``: p50, p99, the last (total), and how long the
  request itself took;
- **separate** (the peer, in the same run): the same apps as one ``POST`` each from 8
  threads, timed the same way from each app's own request;
- **one app alone**, apply → Running, as the floor.

Prints one JSON document. ``python bench/placement.py [--apps 100] [--rounds 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from agent import MARKER, TEAM, Bench, summary, wait


def app_doc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": name, "team": TEAM, "environment": "dev"},
        "spec": {"command": ["sh", "-c", f"exec sleep {MARKER}"], "replicas": 1},
    }


def until_running(bench: Bench, starts: dict[str, float], timeout: float = 300) -> dict[str, Any]:
    """Poll the list until every app in ``starts`` is Running; their times from ``starts``."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(starts) and time.monotonic() < deadline:
        for doc in bench.apps():
            name = doc["metadata"]["name"]
            if name in starts and name not in done:
                if (doc.get("status") or {}).get("phase") == "Running":
                    done[name] = time.monotonic() - starts[name]
        time.sleep(0.02)
    result = summary(list(done.values())) if done else {"count": 0}
    result["not_running"] = len(starts) - len(done)
    return result


def cpu_seconds(bench: Bench) -> dict[str, float]:
    """CPU time (user + system) the server and the agent have used so far."""
    out = {}
    for name, proc in (("server", bench.server), ("agent", bench.agent)):
        assert proc is not None
        times = psutil.Process(proc.pid).cpu_times()
        out[name] = times.user + times.system
    return out


def with_cpu(bench: Bench, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run``'s result and the CPU seconds the server and agent spent meanwhile (a
    measure that moves less than the times with the machine's other work)."""
    before = cpu_seconds(bench)
    result = run()
    after = cpu_seconds(bench)
    for name in before:
        result[f"{name}_cpu_s"] = round(after[name] - before[name], 2)
    return result


def batch(bench: Bench, count: int, prefix: str) -> dict[str, Any]:
    names = [f"{prefix}-{i}" for i in range(count)]
    body = {"apiVersion": "v1", "kind": "List", "items": [app_doc(n) for n in names]}
    started = time.monotonic()
    answer = bench.post("/api/v1/apply", body)
    answered = time.monotonic() - started
    failed = [r for r in answer["results"] if r.get("error")]
    if failed:
        raise SystemExit(f"bench/placement.py: the batch was refused: {failed[0]['error']}")
    result = until_running(bench, dict.fromkeys(names, started))
    result["request_ms"] = round(answered * 1000, 1)
    return result


def separate(bench: Bench, count: int, prefix: str) -> dict[str, Any]:
    def one(i: int) -> tuple[str, float]:
        name = f"{prefix}-{i}"
        started = time.monotonic()
        bench.post("/api/v1/apply", app_doc(name))
        return name, started

    with ThreadPoolExecutor(8) as pool:
        starts = dict(pool.map(one, range(count)))
    return until_running(bench, starts)


def alone(bench: Bench, count: int) -> dict[str, Any]:
    times = []
    for i in range(count):
        started = time.monotonic()
        bench.post("/api/v1/apply", app_doc(f"alone-{i}"))
        wait(lambda i=i: bench.is_running(f"alone-{i}"), f"alone-{i} Running")
        times.append(time.monotonic() - started)
    bench.delete_all()
    return summary(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apps", type=int, default=100, help="apps applied at once")
    parser.add_argument("--rounds", type=int, default=1, help="batches (and peers) to time")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kled-bench-placement-"))
    bench = Bench(root, "off")
    result: dict[str, Any] = {
        "benchmark": "placement",
        "cpus": os.cpu_count(),
        "load_average": [round(x, 1) for x in psutil.getloadavg()],
        "apps": args.apps,
        "runtime": "process",
    }
    try:
        bench.start()
        result["one_app_alone"] = alone(bench, 5)
        for r in range(args.rounds):
            result[f"batch_{r}"] = with_cpu(bench, lambda r=r: batch(bench, args.apps, f"b{r}"))
            bench.delete_all()
            result[f"separate_{r}"] = with_cpu(
                bench, lambda r=r: separate(bench, args.apps, f"s{r}")
            )
            bench.delete_all()
    finally:
        bench.close()
        if args.keep:
            print(f"data and logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
