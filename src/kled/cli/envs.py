"""``kled env create|list|delete|clone``: a team's environments.

An environment is a named set of apps, configs and secrets; cloning one copies them all
into a new environment (``POST …/environments/SRC/clone``), which is how a developer gets
a private copy of ``staging`` to break.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kled.cli.output import check_format, note, out, show, warn
from kled.cli.state import STATE, TeamOption

app = typer.Typer(no_args_is_help=True)

Output = Annotated[str, typer.Option("--output", "-o", help="table, wide, yaml, json or name.")]


@app.command()
def create(
    name: str,
    display_name: Annotated[
        str | None, typer.Option("--display-name", help="A name for people.")
    ] = None,
    team: TeamOption = None,
) -> None:
    """Create an empty environment."""
    chosen = STATE.team_for(team)
    spec = {"displayName": display_name} if display_name else {}
    doc = {"kind": "Environment", "metadata": {"name": name, "team": chosen}, "spec": spec}
    with STATE.client() as client:
        client.post(f"/api/v1/teams/{chosen}/environments", doc)
    out(f"environment/{name} created")


@app.command("list")
def list_envs(output: Output = "table", team: TeamOption = None) -> None:
    """List the environments of a team."""
    check_format(output)
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        docs = client.list_all(f"/api/v1/teams/{chosen}/environments")
    if not docs and output in ("table", "wide"):
        note(f"no environments in team {chosen}: create one with `kled env create NAME`")
        return
    out(show("Environment", docs, output, single=False))


@app.command()
def delete(name: str, team: TeamOption = None) -> None:
    """Delete an environment with its apps, configs and secrets."""
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        answer = client.delete(f"/api/v1/teams/{chosen}/environments/{name}")
    out(f"environment/{name} {answer.get('result') or 'deleted'}")


@app.command()
def clone(
    source: str,
    target: str,
    team: TeamOption = None,
    with_data: Annotated[
        bool,
        typer.Option(
            "--with-data",
            help="Load each managed service of the clone from its source's latest backup.",
        ),
    ] = False,
) -> None:
    """Copy an environment, with its apps, configs and secrets, to a new one."""
    chosen = STATE.team_for(team)
    body: dict[str, Any] = {"name": target}
    if with_data:
        body["withData"] = True
    with STATE.client() as client:
        answer = client.post(f"/api/v1/teams/{chosen}/environments/{source}/clone", body)
    for text in answer.get("warnings") or []:
        warn(text)
    out(f"environment/{target} created (a clone of {source})")
