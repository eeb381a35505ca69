"""``kled token create|list|revoke``: API tokens of a team's users.

The server returns a new token's secret once, in the answer to its creation, and keeps only
its hash; ``create`` prints the secret alone on stdout so that scripts can capture it
(``TOKEN=$(kled token create --user ci)``). Revoking keeps the record, marked revoked.
A token's user, expiry and revocation are the server's: a token is revoked with ``revoke``
and never restored; a longer life takes a new token.

``--metrics`` (server administrator) works on *metrics tokens* instead: server-wide tokens
that read ``/metrics`` and nothing else, for a Prometheus scraper.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import typer

from kled.cli.output import age, align, check_format, note, out, show, to_json, to_yaml
from kled.cli.state import STATE, TeamOption
from kled.errors import InvalidInput

app = typer.Typer(no_args_is_help=True)

Output = Annotated[str, typer.Option("--output", "-o", help="table, wide, yaml, json or name.")]
Metrics = Annotated[
    bool,
    typer.Option(
        "--metrics",
        help="A server-wide token that reads /metrics only (server administrator).",
    ),
]
METRICS_TOKENS = "/api/v1/metrics-tokens"


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
    metrics: Metrics = False,
) -> None:
    """Create a token and print its secret (shown this once)."""
    if metrics:
        if user or description:
            raise InvalidInput("a metrics token has no --user or --description")
        _create_metrics_token(name or f"metrics-{secrets.token_hex(3)}", ttl)
        return
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


def _create_metrics_token(name: str, ttl: str | None) -> None:
    body: dict[str, Any] = {"name": name}
    if ttl:
        body["ttl"] = ttl
    with STATE.client() as client:
        answer = client.post(METRICS_TOKENS, body)
    secret = answer.get("token")
    if not secret:
        raise InvalidInput("the server returned no token secret")
    note(f"metrics token {name} created (reads /metrics only); it is shown only once:")
    out(str(secret))


@app.command("list")
def list_tokens(
    output: Output = "table", team: TeamOption = None, metrics: Metrics = False
) -> None:
    """List the tokens of a team (members see their own), or the metrics tokens."""
    check_format(output)
    if metrics:
        _list_metrics_tokens(output)
        return
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        docs = client.list_all(f"/api/v1/teams/{chosen}/tokens")
    if not docs and output in ("table", "wide"):
        note(f"no tokens in team {chosen}")
        return
    out(show("Token", docs, output, single=False))


def _list_metrics_tokens(output: str) -> None:
    with STATE.client() as client:
        items: list[dict[str, Any]] = client.get(METRICS_TOKENS)["items"]
    if output == "json":
        out(to_json(items))
    elif output == "yaml":
        out(to_yaml(items).rstrip("\n"))
    elif output == "name":
        out("\n".join(item["name"] for item in items))
    elif not items:
        note("no metrics tokens")
    else:
        rows = [["NAME", "EXPIRES", "REVOKED", "AGE"]]
        rows += [
            [
                item["name"],
                item.get("expiresAt") or "never",
                str(bool(item.get("revoked"))).lower(),
                age(item.get("createdAt")),
            ]
            for item in items
        ]
        out(align(rows))


@app.command()
def revoke(name: str, team: TeamOption = None, metrics: Metrics = False) -> None:
    """Revoke a token: it stops working at once, its record stays, marked revoked."""
    if metrics:
        with STATE.client() as client:
            client.delete(f"{METRICS_TOKENS}/{name}")
        out(f"metrics token {name} revoked")
        return
    chosen = STATE.team_for(team)
    path = f"/api/v1/teams/{chosen}/tokens/{name}"
    with STATE.client() as client:
        doc = client.get(path)
        doc.setdefault("spec", {})["revoked"] = True
        doc.pop("status", None)
        client.put(path, doc)
    out(f"token/{name} revoked")
