"""Managed services: create → Ready per template, and what backup and restore cost beside
plain ``pg_dump``/``pg_restore`` (issue 17, "Measure").

``ready``: the full stack of tests/e2e/agentlab.py (the control plane, one agent on a
namespace host, the mesh on): for each built-in template, from the ``POST`` of a
ManagedService to ``status.phase == Ready`` (the server initialised, started, its
credentials set and its health check passed, as the control plane sees it), cold: a new
data directory each time. The packages are installed before the run (``make apt``), so no
install is inside the figure; their versions are reported apart.

``postgres_backup``: one PostgreSQL server run by ``kled.agent.servicerun`` on this host
(root namespace, a free port), filled with ``--mb`` MB (default 100) of rows; then, in
the same run and interleaved, ``servicerun backup`` (the command ``kled service backup``
runs inside the replica) against plain ``pg_dump -Fc`` of the same database, and a restore
into a new service (``servicerun serve --restore-from``: init, start, ``pg_restore``, until
healthy) against the same done by hand: a fresh server started by servicerun, then plain
``pg_restore`` into its empty database. Ratios are medians over ``--rounds`` rounds.

    python bench/services.py [--quick] [--mb N] [--no-lab]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

PG_BIN = "/usr/lib/postgresql/15/bin"
CREDS = {"user": "app", "password": secrets.token_hex(8), "database": "app"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runner(verb: str, data: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kled.agent.servicerun", verb, "--engine", "postgres",
            "--bin-dir", PG_BIN, "--data", str(data), "--port", str(port), *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, **CREDS, "PGPASSWORD": CREDS["password"]}


def _wait(check: Callable[[], bool], what: str, tries: int = 6000) -> None:
    for _ in range(tries):
        if check():
            return
        time.sleep(0.01)
    raise RuntimeError(f"never happened: {what}")


@contextmanager
def _server(data: Path, *extra: str) -> Iterator[tuple[int, float]]:
    """A server run by servicerun; yields its port and seconds until healthy."""
    port = _free_port()
    started = time.monotonic()
    proc = subprocess.Popen(_runner("serve", data, port, *extra), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"servicerun exited with {proc.returncode}")
        done = subprocess.run(_runner("health", data, port), env=_env(), check=False)
        return done.returncode == 0

    try:
        _wait(healthy, "a healthy server")
        yield port, time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(60)


def _psql(port: int, sql: str, db: str = "app") -> str:
    argv = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "app", "-d", db, "-tAc", sql]
    return subprocess.run(argv, env=_env(), check=True, capture_output=True, text=True).stdout


def _timed(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, env=_env(), check=True, capture_output=True)
    return time.monotonic() - started


def postgres_backup(mb: int, rounds: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="kled-bench-ms-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        with _server(root / "src") as (port, _):
            rows = mb * 1024 * 1024 // 165  # ~165 bytes a row on disk, with its overhead
            _psql(port, "CREATE TABLE t (id bigint, a text, b text)")
            _psql(port, f"INSERT INTO t SELECT g, md5(g::text), md5((g * 7)::text) || "
                        f"md5(g::text) FROM generate_series(1, {rows}) g")  # fmt: skip
            size = int(_psql(port, "SELECT pg_database_size('app')").strip())
            ours, plain, dumps = [], [], root / "dumps"
            for i in range(rounds):
                ours.append(_timed(_runner("backup", root / "src", port, "--to", str(dumps),
                                           "--label", f"r{i}")))  # fmt: skip
                plain_file = dumps / f"plain-{i}.pgdump"
                plain.append(_timed(["pg_dump", "-h", "127.0.0.1", "-p", str(port), "-U", "app",
                                     "-Fc", "-d", "app", "-f", str(plain_file)]))  # fmt: skip
            dump = sorted(dumps.glob("r*.pgdump"))[0]
            restore_total, fresh, plain_restore = [], [], []
            for i in range(rounds):
                with _server(root / f"fresh{i}") as (_, took):
                    fresh.append(took)
                with _server(root / f"restored{i}", "--restore-from", str(dump)) as (p2, took):
                    restore_total.append(took)
                    assert int(_psql(p2, "SELECT count(*) FROM t")) == rows
                with _server(root / f"empty{i}") as (p3, _):
                    plain_restore.append(_timed(["pg_restore", "-h", "127.0.0.1", "-p", str(p3),
                                                 "-U", "app", "-d", "app", "--no-owner",
                                                 str(plain_file)]))  # fmt: skip
        backup_ratio = statistics.median(ours) / statistics.median(plain)
        plain_total = statistics.median(fresh) + statistics.median(plain_restore)
        return {
            "database_bytes": size,
            "dump_bytes": dump.stat().st_size,
            "rounds": rounds,
            "backup_s": {"servicerun": ours, "pg_dump": plain},
            "backup_overhead_ratio": round(backup_ratio, 3),
            "restore_s": {
                "servicerun_total": restore_total,
                "fresh_start": fresh,
                "pg_restore": plain_restore,
            },
            "restore_overhead_ratio": round(statistics.median(restore_total) / plain_total, 3),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _packages() -> dict[str, str]:
    out = {}
    for name in ("postgresql-15", "redis-server", "mariadb-server", "nats-server"):
        done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name],
                              capture_output=True, text=True, check=False)  # fmt: skip
        out[name] = done.stdout.strip() or "not installed"
    return out


def ready_per_template(templates: list[str]) -> dict[str, Any]:
    from agentlab import MARKER_VAR, lab_mesh

    services = Path(tempfile.mkdtemp(prefix="kled-bench-ms-", dir="/var/tmp"))
    services.chmod(0o755)
    os.environ["KLED_SERVICES_ROOT"] = str(services)
    env_path = "/api/v1/teams/a/environments/dev"
    out: dict[str, Any] = {}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="kled-bench-lab-") as tmp,
            lab_mesh(Path(tmp), 1, "msbench") as mesh,
        ):
            mesh.start_agent(1)
            mesh.team("a", "100.94.0.0/16")
            env = mesh.api("GET", env_path)
            env["spec"]["variables"] = {MARKER_VAR: mesh.marker}
            mesh.api("PUT", env_path, env)
            for template in templates:
                name = f"b-{template}"
                body = {"metadata": {"name": name}, "spec": {"template": template}}
                started = time.monotonic()
                mesh.api("POST", f"{env_path}/managedservices", body)

                def ready(name: str = name) -> bool:
                    doc = mesh.api("GET", f"{env_path}/managedservices/{name}")
                    return (doc.get("status") or {}).get("phase") == "Ready"

                _wait(ready, f"{name} Ready", tries=12000)
                out[template] = {"create_to_ready_s": round(time.monotonic() - started, 3)}
    finally:
        shutil.rmtree(services, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10 MB, 1 round")
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-lab", action="store_true", help="skip create → Ready")
    args = parser.parse_args()
    mb, rounds = (10, 1) if args.quick else (args.mb, args.rounds)
    result: dict[str, Any] = {"packages": _packages()}
    if not args.no_lab:
        result["ready"] = ready_per_template(["postgres", "redis", "mariadb", "nats"])
    result["postgres_backup"] = postgres_backup(mb, rounds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
