"""First start of the control plane over many apps: serving, caught up, and a restart.

Seeds ``--apps`` apps over ``--teams`` teams (one environment each) straight into the
database, as a restore would, then runs ``kled server`` (with its embedded NATS, so the
workload controller runs too) and reports:

- ``seconds_to_serving``: until ``/readyz`` answers (the API serves);
- ``seconds_to_caught_up``: until every app has its service IP in ``status.ip`` (the mesh
  controller and IPAM are done with them);
- ``writes_first_start``: revisions the controllers wrote to get there;
- after a restart: ``restart_seconds_to_serving`` and ``writes_on_restart`` over the
  ``--idle`` seconds that follow (what is already right is not written again: 0).

On SQLite and on PostgreSQL (a throwaway database at 127.0.0.1:5432, when reachable).
Prints one JSON document.

    python bench/startup.py [--apps 10000] [--teams 20] [--backend sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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

KLED = Path(sys.executable).parent / "kled"


def app_doc(name: str, team: str) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": name, "team": team, "environment": "dev", "labels": {"b": "1"}},
        "spec": {"runtime": "process", "command": ["sleep", "1"], "replicas": 1},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def seed(data_dir: Path, database: str, apps: int, teams: int) -> tuple[float, int]:
    """Teams, one environment each and ``apps`` apps, a thousand rows to a statement;
    the seconds it took and the revision it left."""
    from seeding import write_documents

    began = time.perf_counter()
    docs: list[dict[str, Any]] = []
    for t in range(teams):
        docs.append({"kind": "Team", "metadata": {"name": f"t{t:03d}"}, "spec": {}})
        env = {"kind": "Environment", "metadata": {"name": "dev", "team": f"t{t:03d}"}}
        docs.append({**env, "spec": {}})
    for n in range(apps):
        docs.append(app_doc(f"app-{n:05d}", f"t{n % teams:03d}"))
    rev = await write_documents(data_dir, database, docs)
    return time.perf_counter() - began, rev


class Server:
    def __init__(self, data: Path, database: str) -> None:
        self.data = data
        self.database = database
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data.parent / "server.log"

    def start(self) -> float:
        """Start it; the seconds until ``/readyz`` answers."""
        args = [str(KLED), "server", "--data-dir", str(self.data), "--database", self.database]
        args += ["--listen", f"127.0.0.1:{self.port}", "--embedded-nats"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLED_")}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        began = time.perf_counter()
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - began
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"kled server exited:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def revision(self) -> int:
        return int(httpx.get(self.url + "/readyz", timeout=30).json()["revision"])

    def without_ip(self, apps: int) -> int:
        """How many apps have no service IP yet, asked of the database itself: listing
        10,000 apps through the API would take the very CPU the server is starting with."""
        query = "SELECT count(*) FROM resources WHERE kind = 'App' AND {ip} IS NOT NULL"
        if self.database.startswith("sqlite"):
            import sqlite3

            with contextlib.closing(sqlite3.connect(self.database.split("///", 1)[1])) as db:
                row = db.execute(query.format(ip="json_extract(doc, '$.status.ip')")).fetchone()
        else:
            import psycopg

            with psycopg.connect(self.database) as db:
                row = db.execute(query.format(ip="doc->'status'->>'ip'")).fetchone()
        return apps - int(row[0] if row else 0)


def run_backend(name: str, database: str | None, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        db_url = database or f"sqlite:///{data / 'kled.db'}"
        seeded, seeded_revision = asyncio.run(seed(data, db_url, args.apps, args.teams))
        server = Server(data, db_url)
        try:
            began = time.perf_counter()
            serving = server.start()
            while server.without_ip(args.apps) and time.perf_counter() - began < args.give_up:
                time.sleep(0.5)
            caught_up = time.perf_counter() - began
            left = server.without_ip(args.apps)
            time.sleep(args.idle)  # let the other controllers finish their first round
            written = server.revision() - seeded_revision
            server.stop()
            restart = server.start()
            before = server.revision()
            time.sleep(args.idle)
            rewritten = server.revision() - before
        finally:
            server.stop()
        return {
            "backend": name,
            "apps": args.apps,
            "teams": args.teams,
            "seed_seconds": round(seeded, 1),
            "seconds_to_serving": round(serving, 2),
            "seconds_to_caught_up": round(caught_up, 2),
            "apps_without_ip_at_the_end": left,
            "writes_first_start": written,
            "restart_seconds_to_serving": round(restart, 2),
            "writes_on_restart": rewritten,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--teams", type=int, default=20, help="at most 1022 apps per team")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds watched for writes")
    parser.add_argument("--give-up", type=float, default=900.0, help="seconds to catch up")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
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
    print(json.dumps({"bench": "startup", "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
