"""``kled top apps|services|nodes``: what apps, managed services and nodes use now, as
``kubectl top`` shows it (a managed service under its name, not as its server app).

The numbers are the agents' latest samples (every 10 s), summed per app over its
replicas: CPU in millicores (``250m``), memory in Mi, restarts and ready replicas.
``-o json`` prints the API's rows as they are, numbers in millicores and bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from kled.cli.output import align, note, out, to_json
from kled.cli.state import STATE, EnvOption, TeamOption
from kled.errors import InvalidInput

app = typer.Typer(no_args_is_help=True)

Output = Annotated[str, typer.Option("--output", "-o", help="table or json.")]


def _format(output: str) -> str:
    if output not in ("table", "json"):
        raise InvalidInput(f"unknown output format {output!r} (use table, json)", field="--output")
    return output


def millicores(value: Any) -> str:
    """CPU as ``kubectl top`` shows it: always millicores, ``-`` when not measured yet."""
    return f"{value}m" if isinstance(value, int) else "-"


def mebibytes(value: Any) -> str:
    return f"{round(value / (1 << 20))}Mi" if isinstance(value, int) else "-"


def _percent(value: Any) -> str:
    return f"{value}%" if isinstance(value, int) else "-"


AllEnvs = Annotated[
    bool, typer.Option("--all-environments", "-A", help="Every environment of the team.")
]


def _team_rows(
    what: str,
    env: str | None,
    all_envs: bool,
    team: str | None,
    output: str,
    head: list[str],
    cells: Callable[[dict[str, Any]], list[str]],
    empty: str,
) -> None:
    """Fetch a team's usage rows (``what`` under ``/usage``) and print them, the environment
    first when more than one is shown; ``empty`` is said where there are none."""
    _format(output)
    chosen_team = STATE.team_for(team)
    chosen_env = None if all_envs else STATE.env_or_none(env)
    params = {"environment": chosen_env} if chosen_env else {}
    with STATE.client() as client:
        path = f"/api/v1/teams/{chosen_team}/usage{what}"
        rows: list[dict[str, Any]] = client.get(path, **params)["items"]
    if output == "json":
        out(to_json(rows))
        return
    if not rows:
        where = f"environment {chosen_env}" if chosen_env else f"team {chosen_team}"
        note(empty.format(where=where))
        return
    show_env = chosen_env is None
    table = [["ENVIRONMENT", *head] if show_env else head]
    for row in rows:
        table.append([str(row["environment"]), *cells(row)] if show_env else cells(row))
    out(align(table))


@app.command("apps")
def top_apps(
    env: EnvOption = None,
    all_envs: AllEnvs = False,
    team: TeamOption = None,
    output: Output = "table",
) -> None:
    """CPU, memory, restarts and ready replicas of a team's apps."""
    _team_rows(
        "",
        env,
        all_envs,
        team,
        output,
        ["NAME", "READY", "CPU(cores)", "MEMORY(bytes)", "RESTARTS"],
        lambda row: [
            str(row["app"]),
            f"{row['ready']}/{row['replicas']}",
            millicores(row.get("cpuMillicores")),
            mebibytes(row.get("memoryBytes")),
            str(row["restarts"]),
        ],
        "no usage yet in {where}: agents report it every 10 s while replicas run",
    )


@app.command("services")
def top_services(
    env: EnvOption = None,
    all_envs: AllEnvs = False,
    team: TeamOption = None,
    output: Output = "table",
) -> None:
    """CPU, memory, restarts and health of a team's managed services (their servers)."""
    _team_rows(
        "/services",
        env,
        all_envs,
        team,
        output,
        ["NAME", "TEMPLATE", "PHASE", "CPU(cores)", "MEMORY(bytes)", "RESTARTS", "NODE"],
        lambda row: [
            str(row["service"]),
            str(row.get("template") or "-"),
            str(row.get("phase") or "-"),
            millicores(row.get("cpuMillicores")),
            mebibytes(row.get("memoryBytes")),
            str(row["restarts"]),
            ",".join(row.get("nodes") or []) or "-",
        ],
        "no managed services in {where}",
    )


@app.command("nodes")
def top_nodes(output: Output = "table") -> None:
    """CPU and memory of every node, and the share of its capacity."""
    _format(output)
    with STATE.client() as client:
        rows: list[dict[str, Any]] = client.get("/api/v1/usage/nodes")["items"]
    if output == "json":
        out(to_json(rows))
        return
    if not rows:
        note("no node has reported usage yet: agents report it every 10 s")
        return
    table = [["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]]
    for row in rows:
        table.append(
            [
                str(row["node"]),
                millicores(row.get("cpuMillicores")),
                _percent(row.get("cpuPercent")),
                mebibytes(row.get("memoryBytes")),
                _percent(row.get("memoryPercent")),
            ]
        )
    out(align(table))
