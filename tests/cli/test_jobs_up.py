"""Jobs on a real local agent (``kled up``): retried until they pass, and run by a schedule.

Each attempt of a Job is a real process the agent starts; what the user sees is what
``kled job describe|logs|list`` print.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from clikit import Cli
from test_hosts_up import start_up

from kled.cli.server import local_node_name

pytestmark = pytest.mark.slow

TEAM = f"jobs-{random.randint(100_000, 999_999)}"


def _until(check: Any, what: str, tries: int = 600) -> Any:
    for _ in range(tries):
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}")


def _job(cli: Cli, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cli.ok("get", "job", name, "-e", "dev", "-o", "json"))
    return found


def _apply(cli: Cli, name: str, spec: dict[str, Any]) -> None:
    doc = {"apiVersion": "kled.io/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}
    cli.ok("apply", "-f", "-", "-e", "dev", stdin=yaml.safe_dump(doc))


def test_jobs_retry_until_they_pass_and_a_schedule_runs_them(cli: Cli, tmp_path: Path) -> None:
    up, lines = start_up(cli)
    node = local_node_name()
    try:
        _until(lambda: any("Next:" in line for line in lines), "kled up announced itself")

        def ready() -> bool:
            nodes = json.loads(cli.ok("node", "list", "-o", "json"))["items"]
            return any(
                n["metadata"]["name"] == node and n.get("status", {}).get("phase") == "Ready"
                for n in nodes
            )

        _until(ready, "the local node Ready")
        cli.ok("team", "create", TEAM)
        cli.ok("context", "set", "--team", TEAM)
        cli.ok("env", "create", "dev")

        # Bad input: refused with the field, nothing stored.
        bad = {"apiVersion": "kled.io/v1", "kind": "Job", "metadata": {"name": "bad"},
               "spec": {"command": ["true"], "schedule": "61 * * * *"}}  # fmt: skip
        refused = cli("apply", "-f", "-", "-e", "dev", stdin=yaml.safe_dump(bad))
        assert refused.code == 2, refused
        assert "spec.schedule" in refused.err and "minute field" in refused.err
        assert "bad" not in cli.ok("get", "jobs", "-e", "dev")

        # A job that fails twice, then passes: it counts its attempts in a file.
        count = tmp_path / "attempts"
        script = (f'n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; '
                  'echo "attempt $n"; echo "oops $n" >&2; [ "$n" -ge 3 ]')  # fmt: skip
        _apply(cli, "migrate", {"command": ["sh", "-c", script], "backoffLimit": 4})
        done = _until(
            lambda: _job(cli, "migrate")["status"].get("phase") in ("Succeeded", "Failed"),
            "the job finished",
        )
        assert done
        status = _job(cli, "migrate")["status"]
        assert (status["phase"], status["reason"], status["attempts"]) == (
            "Succeeded", "Completed", 3,
        ), status  # fmt: skip
        assert status["startTime"] and status["completionTime"]
        assert count.read_text().strip() == "3"
        page = cli.ok("job", "describe", "migrate", "-e", "dev")
        assert "Status:        Succeeded (Completed)" in page
        assert "migrate-1-3" in page
        logs = cli("job", "logs", "migrate", "-e", "dev")
        assert logs.out.strip() == "attempt 3" and logs.err.strip() == "oops 3"
        first = cli("job", "logs", "migrate", "-e", "dev", "--attempt", "1")
        assert first.out.strip() == "attempt 1"
        assert cli("job", "logs", "migrate", "-e", "dev", "--attempt", "9").code == 2

        # A job over its backoffLimit ends Failed and says why.
        _apply(cli, "doomed", {"command": ["sh", "-c", "exit 7"], "backoffLimit": 1})
        _until(lambda: _job(cli, "doomed")["status"].get("phase") == "Failed", "doomed failed")
        status = _job(cli, "doomed")["status"]
        assert (status["reason"], status["attempts"]) == ("BackoffLimitExceeded", 2)
        assert "exit code 7" in status["message"]

        # A schedule with a seconds field: two runs well within a minute.
        ticks = tmp_path / "ticks"
        _apply(cli, "tick", {"command": ["sh", "-c", f"date +%s >> {ticks}; echo tick"],
                             "schedule": "*/4 * * * * *", "concurrencyPolicy": "Forbid",
                             "successfulJobsHistoryLimit": 2})  # fmt: skip
        _until(lambda: _job(cli, "tick")["status"].get("succeeded", 0) >= 2, "two runs", 300)
        stamps = [int(s) for s in ticks.read_text().split()]
        assert len(stamps) >= 2 and stamps[1] > stamps[0]
        rows = cli.ok("job", "list", "-e", "dev")
        assert any(r.split()[:2] == ["tick", "Succeeded"] or r.split()[0] == "tick"
                   for r in rows.splitlines()[1:])  # fmt: skip
        assert "*/4 * * * * *" in rows
        assert cli.ok("job", "logs", "tick", "-e", "dev").strip() == "tick"

        # Deleting a job deletes the apps of its attempts.
        cli.ok("job", "delete", "tick", "-e", "dev")
        cli.ok("job", "delete", "migrate", "-e", "dev")

        def gone() -> bool:
            names = [r.split()[0] for r in cli.ok("get", "apps", "-e", "dev").splitlines()[1:]]
            return not any(n.startswith(("tick-", "migrate-")) for n in names)

        _until(gone, "the attempts' apps deleted with their jobs")
        missing = cli("job", "describe", "migrate", "-e", "dev")
        assert missing.code == 1 and "job/migrate not found" in missing.err
    finally:
        up.stop(signal.SIGINT)
        cli("down")
        up.stop(signal.SIGKILL)
