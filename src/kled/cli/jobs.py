"""``kled job list|describe|logs|run-now|delete``: Jobs and their runs.

A Job is applied as any resource (``kled apply -f job.yaml``; ``kled get jobs`` lists it
too); these commands read the runs the jobs controller (``control/jobs.py``) writes to
``Job.status``, show an attempt's output (each attempt is an App of one replica, whose
logs the agents keep), and start a run at once by setting the ``kled.io/run-now``
annotation (a read and a ``PUT`` with the resourceVersion read, retried on a conflict).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from kled.cli.logs import stream_logs
from kled.cli.output import age, align, out, to_json, to_yaml
from kled.cli.state import STATE, EnvOption, TeamOption
from kled.control.jobs import RUN_NOW, attempt_name
from kled.errors import Conflict, InvalidInput, NotFound

app = typer.Typer(no_args_is_help=True)

Output = Annotated[str, typer.Option("--output", "-o", help="table, json or yaml.")]
_TRIES = 20


def _path(team: str, env: str, name: str = "") -> str:
    base = f"/api/v1/teams/{team}/environments/{env}/jobs"
    return f"{base}/{name}" if name else base


def _get(client: Any, team: str, env: str, name: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = client.get(_path(team, env, name))
    except NotFound:
        raise NotFound(f"job/{name} not found in {team}/{env}: see `kled job list`") from None
    return doc


def _format(output: str) -> str:
    if output not in ("table", "json", "yaml"):
        raise InvalidInput(f"unknown output format {output!r} (use table, json, yaml)",
                           field="--output")  # fmt: skip
    return output


def _duration(run: dict[str, Any]) -> str:
    start, end = run.get("startTime"), run.get("completionTime")
    if not start or not end:
        return "-"
    took = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return f"{int(took.total_seconds())}s"


@app.command("list")
def list_jobs(env: EnvOption = None, team: TeamOption = None, output: Output = "table") -> None:
    """The jobs of an environment: last run, attempts, schedule."""
    _format(output)
    chosen_team, chosen_env = STATE.team_for(team), STATE.env_for(env)
    with STATE.client() as client:
        docs: list[dict[str, Any]] = client.get(_path(chosen_team, chosen_env))["items"]
    if output != "table":
        out(to_json(docs) if output == "json" else to_yaml(docs))
        return
    rows = [["NAME", "STATUS", "ATTEMPTS", "SCHEDULE", "LAST RUN", "NEXT RUN", "AGE"]]
    for doc in docs:
        status, spec = doc.get("status") or {}, doc.get("spec") or {}
        rows.append([
            doc["metadata"]["name"],
            str(status.get("phase") or "Pending"),
            str(status.get("attempts") or "-"),
            str(spec.get("schedule") or "-"),
            age(status.get("startTime")) if status.get("startTime") else "-",
            str(status.get("nextScheduleTime") or "-"),
            age(doc["metadata"].get("creationTimestamp")),
        ])  # fmt: skip
    if docs:
        out(align(rows))
    else:
        out(f"No jobs in {chosen_team}/{chosen_env}.")


@app.command()
def describe(name: str, env: EnvOption = None, team: TeamOption = None) -> None:
    """A job: its spec, its state, and each run it keeps."""
    chosen_team, chosen_env = STATE.team_for(team), STATE.env_for(env)
    with STATE.client() as client:
        doc = _get(client, chosen_team, chosen_env, name)
    spec, status = doc.get("spec") or {}, doc.get("status") or {}
    lines = [
        f"Name:          {name}",
        f"Environment:   {chosen_team}/{chosen_env}",
        f"Command:       {' '.join([*spec.get('command', []), *spec.get('args', [])]) or '-'}",
        f"Image:         {spec.get('image') or '-'}",
        f"Backoff limit: {spec.get('backoffLimit')}",
        f"Deadline:      {spec.get('activeDeadlineSeconds') or '-'}",
        f"Schedule:      {spec.get('schedule') or '-'}"
        + (f" (concurrency {spec.get('concurrencyPolicy')})" if spec.get("schedule") else ""),
        f"Status:        {status.get('phase') or 'Pending'}"
        + (f" ({status['reason']})" if status.get("reason") else ""),
    ]
    if status.get("message"):
        lines.append(f"Message:       {status['message']}")
    if status.get("nextScheduleTime"):
        lines.append(f"Next run:      {status['nextScheduleTime']}")
    runs = status.get("runs") or []
    if runs:
        rows = [["RUN", "STATUS", "REASON", "ATTEMPTS", "STARTED", "DURATION", "APP"]]
        for run in runs:
            rows.append([
                str(run.get("run")), str(run.get("phase")), str(run.get("reason") or "-"),
                str(run.get("attempts")), str(run.get("startTime") or "-"), _duration(run),
                attempt_name(name, int(run["run"]), int(run["attempts"])),
            ])  # fmt: skip
        lines += ["Runs:", *("  " + line for line in align(rows).splitlines())]
    else:
        lines.append("Runs:          <none>")
    out("\n".join(lines))


@app.command()
def logs(
    name: str,
    env: EnvOption = None,
    team: TeamOption = None,
    run: Annotated[int | None, typer.Option("--run", help="This run (default: newest).")] = None,
    attempt: Annotated[
        int | None, typer.Option("--attempt", help="This attempt of the run (default: its last).")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep showing new lines.")] = False,
) -> None:
    """The output of a job's attempt (stdout and stderr)."""
    chosen_team, chosen_env = STATE.team_for(team), STATE.env_for(env)
    with STATE.client() as client:
        doc = _get(client, chosen_team, chosen_env, name)
        runs = (doc.get("status") or {}).get("runs") or []
        if not runs:
            raise NotFound(f"job/{name} has not run yet: see `kled job describe {name}`")
        chosen = runs[-1] if run is None else next((r for r in runs if r["run"] == run), None)
        if chosen is None:
            kept = ", ".join(str(r["run"]) for r in runs)
            raise InvalidInput(f"job/{name} keeps no run {run} (it keeps: {kept})", field="--run")
        last = int(chosen["attempts"])
        if attempt is not None and not 1 <= attempt <= last:
            raise InvalidInput(f"run {chosen['run']} has attempts 1 to {last}", field="--attempt")
        target = attempt_name(name, int(chosen["run"]), attempt or last)
        path = f"/api/v1/teams/{chosen_team}/environments/{chosen_env}/apps/{target}/logs"
        params = {"follow": "true" if follow else "false"}
        for entry in stream_logs(client, path, params):
            sink = sys.stderr if entry.get("stream") == "stderr" else sys.stdout
            sink.write(str(entry.get("line", "")) + "\n")
            sink.flush()


@app.command("run-now")
def run_now(name: str, env: EnvOption = None, team: TeamOption = None) -> None:
    """Start a run of a job at once (whatever its schedule, suspended or not)."""
    chosen_team, chosen_env = STATE.team_for(team), STATE.env_for(env)
    stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    with STATE.client() as client:
        for attempt in range(_TRIES):
            doc = _get(client, chosen_team, chosen_env, name)
            meta = doc.setdefault("metadata", {})
            meta["annotations"] = {**(meta.get("annotations") or {}), RUN_NOW: stamp}
            doc.pop("status", None)
            try:
                client.put(_path(chosen_team, chosen_env, name), doc)
                break
            except Conflict:
                if attempt == _TRIES - 1:
                    raise
    out(f"job/{name}: a run starts now")


@app.command()
def delete(name: str, env: EnvOption = None, team: TeamOption = None) -> None:
    """Delete a job, its runs and their logs (a going attempt is stopped)."""
    chosen_team, chosen_env = STATE.team_for(team), STATE.env_for(env)
    with STATE.client() as client:
        try:
            client.delete(_path(chosen_team, chosen_env, name))
        except NotFound:
            raise NotFound(
                f"job/{name} not found in {chosen_team}/{chosen_env}: see `kled job list`"
            ) from None
    out(f"job/{name} deleted")
