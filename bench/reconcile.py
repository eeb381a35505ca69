"""A round of the workloads controller at many apps: what one user's change costs it.

Seeds ``--apps`` apps (one replica each, a ``sleep``) and ``--nodes`` nodes into a SQLite
store (``seeding.write_documents``), runs a ``WorkloadController`` in this process with an
in-memory desired-state sink (the controller alone: no bus, no API), lets it place every
replica, then ``--changes`` times scales one app by one replica and times the controller's
handling of that event: reading it, a round of scheduling over every app, the app's status
and the changed node's state. Reported: the first round (every app new), and the change
rounds' p50 and p99, with the process's CPU seconds per round.

Prints one JSON document. ``python bench/reconcile.py [--apps 1000] [--nodes 100]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kled.control.workloads import WorkloadController
from kled.resources.hoststate import Capacity, HostDesiredState, NodeHeartbeat
from kled.resources.kinds import validate
from kled.store.cipher import SecretCipher
from kled.store.database import Database
from kled.store.objects import Key, Store
from seeding import write_documents

TEAM_SIZE = 1000


class Sink:
    def __init__(self) -> None:
        self.puts = 0

    async def put(self, node: str, state: HostDesiredState) -> None:
        self.puts += 1


def app_doc(i: int) -> dict[str, Any]:
    return validate(
        {
            "kind": "App",
            "metadata": {"name": f"app{i}", "team": f"t{i // TEAM_SIZE}", "environment": "dev"},
            "spec": {"command": ["sleep", "100000"], "replicas": 1},
        }
    )


def node_doc(i: int) -> dict[str, Any]:
    return validate(
        {"kind": "Node", "metadata": {"name": f"n{i}"}, "spec": {"capacity": {"pods": 240}}}
    )


def beat(node: str, n: int) -> NodeHeartbeat:
    return NodeHeartbeat(
        node=node,
        time=datetime.fromtimestamp(1_800_000_000 + n, UTC),
        capacity=Capacity(cpu_millicores=64_000, memory_bytes=256 << 30),
        capabilities=["netns"],
        agent_version="bench",
    )


async def settle(ctl: WorkloadController) -> None:
    while await ctl.step():
        pass


async def run(apps: int, nodes: int, changes: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="kled-bench-reconcile-"))
    url = f"sqlite:///{folder / 'kled.db'}"
    docs = [node_doc(i) for i in range(nodes)] + [app_doc(i) for i in range(apps)]
    await write_documents(folder, url, docs)
    db = await Database.open(url)
    store = Store(db, SecretCipher.from_data_dir(folder))
    sink = Sink()
    ctl = WorkloadController(store, sink, not_ready_after=3600, reschedule_after=7200)
    await ctl.resync()  # every app Pending: no node has said it is Ready
    wall, cpu = time.perf_counter(), time.process_time()
    await ctl.on_heartbeats([beat(f"n{i}", 1) for i in range(nodes)])
    await settle(ctl)
    first = {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    rounds, cpus = [], []
    for n in range(changes):
        i = (n * 7) % apps
        key = Key("App", f"t{i // TEAM_SIZE}", "dev", f"app{i}")
        doc = await store.get(key)
        doc["spec"]["replicas"] = int(doc["spec"].get("replicas") or 1) + 1
        await store.update(doc)
        wall, cpu = time.perf_counter(), time.process_time()
        await settle(ctl)
        rounds.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    await ctl.stop()
    await db.close()
    shutil.rmtree(folder, ignore_errors=True)
    rounds.sort()
    return {
        "apps": apps,
        "nodes": nodes,
        "first_placement": {k: round(v, 3) for k, v in first.items()},
        "change": {
            "rounds": changes,
            "p50_ms": round(statistics.median(rounds) * 1000, 1),
            "p99_ms": round(rounds[min(len(rounds) - 1, int(len(rounds) * 0.99))] * 1000, 1),
            "cpu_ms_mean": round(statistics.mean(cpus) * 1000, 1),
        },
        "node_states_sent": sink.puts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--changes", type=int, default=30)
    args = parser.parse_args()
    if args.apps < 1 or args.nodes < 1 or args.changes < 1:
        parser.error("--apps, --nodes and --changes must be at least 1")
    print(
        json.dumps({"bench": "reconcile", **asyncio.run(run(args.apps, args.nodes, args.changes))})
    )


if __name__ == "__main__":
    main()
