"""``kled token create|list|revoke``: API tokens of a team's users.

The server returns a new token's secret once, in the answer to its creation, and keeps only
its hash; ``create`` prints the secret alone on stdout so that scripts can capture it
(``TOKEN=$(kled token create --user ci)``). Revoking keeps the record, marked revoked.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import typer

from kled.cli.output import check_format, note, out, show
from kled.cli.state import STATE, TeamOption
from kled.errors import InvalidInput

app = typer.Typer(no_args_is_help=True)

Output = Annotated[str, typer.Option("--output", "-o", help="table, wide, yaml, json or name.")]


@app.command()
def create(
    name: Annotated[
        str | None, typer.Argument(help="Token name (default: USER-random).", show_default=False)
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="Whose token (default: yours).")
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Lifetime: 30m, 24h, 7d (default: no expiry).")
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="What it is for.")
    ] = None,
    team: TeamOption = None,
) -> None:
    """Create a token and print its secret (shown this once)."""
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        owner = user
        if not owner:
            who = client.get("/api/v1/whoami")
            if who.get("serverAdmin"):
                raise InvalidInput(
                    f"the server administrator is no user of team {chosen}: pass --user NAME",
                )
            owner = str(who.get("username"))
        spec: dict[str, Any] = {"user": owner}
        if ttl:
            spec["ttl"] = ttl
        if description:
            spec["description"] = description
        token_name = name or f"{owner}-{secrets.token_hex(3)}"
        doc = {"kind": "Token", "metadata": {"name": token_name, "team": chosen}, "spec": spec}
        answer = client.post(f"/api/v1/teams/{chosen}/tokens", doc)
    secret = answer.get("token")
    if not secret:
        raise InvalidInput("the server returned no token secret")
    note(f"token/{token_name} created for {owner} in team {chosen}; it is shown only once:")
    out(str(secret))


@app.command("list")
def list_tokens(output: Output = "table", team: TeamOption = None) -> None:
    """List the tokens of a team (members see their own)."""
    check_format(output)
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        docs = client.list_all(f"/api/v1/teams/{chosen}/tokens")
    if not docs and output in ("table", "wide"):
        note(f"no tokens in team {chosen}")
        return
    out(show("Token", docs, output, single=False))


@app.command()
def revoke(name: str, team: TeamOption = None) -> None:
    """Revoke a token: it stops working at once, its record stays, marked revoked."""
    chosen = STATE.team_for(team)
    path = f"/api/v1/teams/{chosen}/tokens/{name}"
    with STATE.client() as client:
        doc = client.get(path)
        doc.setdefault("spec", {})["revoked"] = True
        doc.pop("status", None)
        client.put(path, doc)
    out(f"token/{name} revoked")
