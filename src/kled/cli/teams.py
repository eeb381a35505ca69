"""``kled team create|list|delete``: the server administrator's view of teams.

A team is the unit of isolation (its own mesh, users and environments); only the server
administrator creates or deletes one, and deleting one deletes everything it holds.
"""

from __future__ import annotations

from typing import Annotated

import typer

from kled.cli.output import check_format, note, out, show
from kled.cli.state import STATE

app = typer.Typer(no_args_is_help=True)

Output = Annotated[str, typer.Option("--output", "-o", help="table, wide, yaml, json or name.")]


@app.command()
def create(
    name: str,
    display_name: Annotated[
        str | None, typer.Option("--display-name", help="A name for people.")
    ] = None,
) -> None:
    """Create a team (server administrator only)."""
    spec = {"displayName": display_name} if display_name else {}
    doc = {"kind": "Team", "metadata": {"name": name}, "spec": spec}
    with STATE.client() as client:
        client.post("/api/v1/teams", doc)
    out(f"team/{name} created")


@app.command("list")
def list_teams(output: Output = "table") -> None:
    """List the teams you can see."""
    check_format(output)
    with STATE.client() as client:
        docs = client.list_all("/api/v1/teams")
    if not docs and output in ("table", "wide"):
        note("no teams yet: create one with `kled team create NAME`")
        return
    out(show("Team", docs, output, single=False))


@app.command()
def delete(name: str) -> None:
    """Delete a team and everything in it (server administrator only)."""
    with STATE.client() as client:
        answer = client.delete(f"/api/v1/teams/{name}")
    out(f"team/{name} {answer.get('result') or 'deleted'}")
