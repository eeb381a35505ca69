"""``kled node token create|list|describe|drain|uncordon|delete``: the hosts that run the apps.

Nodes are server-wide, so every command here is the server administrator's. A node joins
with a token from ``kled node token create`` (printed alone on stdout, so that
``kled agent --token "$(kled node token create)"`` works in a script); ``describe`` shows,
beside the node's status, every replica the scheduler placed on it, gathered from the apps
of every team.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kled.cli.client import Client
from kled.cli.output import check_format, describe_node, note, out, show
from kled.cli.state import STATE, TeamOption
from kled.errors import Conflict, NotFound

app = typer.Typer(no_args_is_help=True)
tokens = typer.Typer(no_args_is_help=True)
app.add_typer(tokens, name="token", help="Create join tokens for new nodes.")

Output = Annotated[str, typer.Option("--output", "-o", help="table, wide, yaml, json or name.")]
NODES = "/api/v1/nodes"
_TRIES = 20


@tokens.command("create")
def token_create(
    ttl: Annotated[str, typer.Option("--ttl", help="How long the token joins nodes: 1h, 30m…")] = (
        "1h"
    ),
    cluster: Annotated[
        str | None,
        typer.Option("--cluster", help="A node of this Kled Cluster only (docs/clusters.md)."),
    ] = None,
    team: TeamOption = None,
) -> None:
    """Make a join token for `kled agent --token` (printed alone on stdout)."""
    with STATE.client() as client:
        if cluster:  # as `kled cluster node-token CLUSTER`
            where = f"/k8s/{STATE.team_for(team)}/{cluster}/kled/node-token"
            answer = client.post(where, {"ttl": ttl})
        else:
            answer = client.post("/api/v1/node-tokens", {"ttl": ttl})
    out(str(answer["token"]))
    note(f"expires at {answer.get('expiresAt')}")


@app.command("list")
def list_nodes(output: Output = "table") -> None:
    """List the nodes, their status, capacity and capabilities."""
    check_format(output)
    with STATE.client() as client:
        docs = client.list_all(NODES)
    if not docs and output in ("table", "wide"):
        note("no nodes: join one with `kled agent --server URL --token $(kled node token create)`")
        return
    out(show("Node", docs, output, single=False))


def _get(client: Client, name: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = client.get(f"{NODES}/{name}")
    except NotFound:
        raise NotFound(f"node/{name} not found: see `kled node list`") from None
    return doc


def replicas_on(client: Client, node: str) -> list[dict[str, Any]]:
    """The replicas placed on ``node``, from the apps of every team, with their app."""
    placed: list[dict[str, Any]] = []
    for team in client.list_all("/api/v1/teams"):
        team_name = (team.get("metadata") or {}).get("name")
        for doc in client.list_all(f"/api/v1/teams/{team_name}/apps"):
            meta = doc.get("metadata") or {}
            for replica in (doc.get("status") or {}).get("replicas") or []:
                if isinstance(replica, dict) and replica.get("node") == node:
                    placed.append(
                        {
                            **replica,
                            "app": f"{meta.get('team')}/{meta.get('environment')}/"
                            f"{meta.get('name')}",
                        }
                    )
    return placed


@app.command("describe")
def describe_cmd(name: str) -> None:
    """Show a node: status, capacity, conditions and the replicas placed on it."""
    with STATE.client() as client:
        doc = _get(client, name)
        placed = replicas_on(client, name)
    out(describe_node(doc, placed))


def _set_unschedulable(name: str, value: bool) -> bool:
    """Write ``spec.unschedulable``; False when it already was ``value``.

    Heartbeats rewrite a node's status every few seconds, so a write made from a read can
    be stale by the time it lands: it is read and written again until it goes through.
    """
    with STATE.client() as client:
        for attempt in range(_TRIES):
            doc = _get(client, name)
            spec = dict(doc.get("spec") or {})
            if bool(spec.get("unschedulable")) == value:
                return False
            spec["unschedulable"] = value
            doc["spec"] = spec
            try:
                client.put(f"{NODES}/{name}", doc)
                return True
            except Conflict:
                if attempt == _TRIES - 1:
                    raise
    return True


@app.command()
def drain(name: str) -> None:
    """Stop placing replicas on a node and move its replicas to other nodes."""
    changed = _set_unschedulable(name, True)
    out(f"node/{name} drained" if changed else f"node/{name} already drained")


@app.command()
def uncordon(name: str) -> None:
    """Let the scheduler place replicas on a drained node again."""
    changed = _set_unschedulable(name, False)
    out(f"node/{name} uncordoned" if changed else f"node/{name} already schedulable")


@app.command()
def delete(name: str) -> None:
    """Forget a node: its replicas move, its NATS credentials are revoked."""
    with STATE.client() as client:
        try:
            client.delete(f"{NODES}/{name}")
        except NotFound:
            raise NotFound(f"node/{name} not found: see `kled node list`") from None
    out(f"node/{name} deleted")


def _register_ssh() -> None:
    # after the commands above, so that `kled node --help` lists add/remove last
    from kled.cli import nodes_ssh

    nodes_ssh.register(app)


_register_ssh()
