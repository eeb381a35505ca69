"""``kled ip list``: which address of a team's block belongs to what.

The control plane gives every team a block and, out of it, addresses to its nodes (mesh),
apps and managed services (service), devices (mesh) and node pod subnets (pods). When a
pod cannot be reached or two things seem to answer on one address, the first question is
who holds it; this command answers from the server's allocation table, the one source of
truth, rather than from the statuses that copy it.

A team member sees their team's allocations; the server administrator may list every
team's with ``-A``. Output is a table (POOL, ADDRESS, OWNER, TEAM), or the raw items as
``-o json|yaml`` in a ``List`` for scripts.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

import typer

from kled.cli.output import align, note, out, to_json, to_yaml
from kled.cli.state import STATE, TeamOption
from kled.errors import InvalidInput

app = typer.Typer(no_args_is_help=True)

FORMATS = ("table", "json", "yaml")
#: the pools in the order a reader meets them: the team's block, then what is carved from it
_POOL_ORDER = {"block": 0, "mesh": 1, "service": 2, "pods": 3}


@app.command("list")
def list_ips(
    team: TeamOption = None,
    all_teams: Annotated[
        bool,
        typer.Option(
            "--all-teams", "-A", help="Every team's addresses (the server administrator only)."
        ),
    ] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table, json or yaml.")] = "table",
) -> None:
    """List the address allocations of a team (or of every team with -A)."""
    if output not in FORMATS:
        raise InvalidInput(
            f"unknown output format {output!r} (use {', '.join(FORMATS)})", field="--output"
        )
    if all_teams and team:
        raise InvalidInput("pass either --team or -A, not both", field="--all-teams")
    path = "/api/v1/ips" if all_teams else f"/api/v1/teams/{STATE.team_for(team)}/ips"
    with STATE.client() as client:
        answer = client.get(path)
    items = sorted(_items(answer), key=_order)
    if output == "json":
        out(to_json({"apiVersion": "kled.io/v1", "kind": "List", "items": items}))
    elif output == "yaml":
        out(to_yaml({"apiVersion": "kled.io/v1", "kind": "List", "items": items}))
    elif not items:
        note("no addresses allocated" + ("" if all_teams else f" in team {STATE.team_for(team)}"))
    else:
        rows = [["POOL", "ADDRESS", "OWNER", "TEAM"]]
        rows.extend(
            [str(i.get("pool", "")), str(i.get("address", "")), str(i.get("owner", "")),
             str(i.get("team", ""))]
            for i in items
        )  # fmt: skip
        out(align(rows))


def _items(answer: Any) -> list[dict[str, Any]]:
    items = answer.get("items") if isinstance(answer, dict) else None
    return [i for i in items or [] if isinstance(i, dict)]


def _order(item: dict[str, Any]) -> tuple[str, int, int, str]:
    """By team, then pool, then address in numeric order (10.0.0.9 before 10.0.0.10)."""
    address = str(item.get("address", ""))
    try:
        number = int(ipaddress.ip_network(address, strict=False).network_address)
    except ValueError:
        number = -1
    pool = str(item.get("pool", ""))
    return str(item.get("team", "")), _POOL_ORDER.get(pool, 9), number, address
