"""``kled user create|list|key``: the members of a team, their roles and SSH keys.

Roles, from most to least powerful: owner, admin, member, viewer. A user signs in with a
token made for them (``kled token create --user NAME``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kled.cli import userkeys
from kled.cli.output import check_format, note, out, show
from kled.cli.state import STATE, TeamOption

app = typer.Typer(no_args_is_help=True)
app.add_typer(userkeys.app, name="key", help="A user's SSH public keys (for workspaces).")

Output = Annotated[str, typer.Option("--output", "-o", help="table, wide, yaml, json or name.")]


@app.command()
def create(
    name: str,
    role: Annotated[str, typer.Option("--role", help="owner, admin, member or viewer.")] = "member",
    email: Annotated[str | None, typer.Option("--email", help="Their e-mail address.")] = None,
    team: TeamOption = None,
) -> None:
    """Add a user to a team with a role."""
    chosen = STATE.team_for(team)
    spec: dict[str, Any] = {"role": role}
    if email:
        spec["email"] = email
    doc = {"kind": "User", "metadata": {"name": name, "team": chosen}, "spec": spec}
    with STATE.client() as client:
        client.post(f"/api/v1/teams/{chosen}/users", doc)
    out(f"user/{name} created ({role} in team {chosen})")


@app.command("list")
def list_users(output: Output = "table", team: TeamOption = None) -> None:
    """List the users of a team."""
    check_format(output)
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        docs = client.list_all(f"/api/v1/teams/{chosen}/users")
    if not docs and output in ("table", "wide"):
        note(f"no users in team {chosen}")
        return
    out(show("User", docs, output, single=False))
