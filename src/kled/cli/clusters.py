"""``kled cluster create|list|delete|kubeconfig``: Kled Clusters and the kubeconfig to use one.

A cluster is a ``Cluster`` document of the team; its Kubernetes API is served by the
control plane at ``/k8s/<team>/<cluster>``. ``kubeconfig`` asks that API for a token that
works for this one cluster and writes a kubeconfig whose context points at it, so that
plain ``kubectl`` (or any Kubernetes client) drives the cluster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from kled.cli.output import check_format, note, out, show
from kled.cli.state import STATE, TeamOption
from kled.errors import InvalidInput

app = typer.Typer(no_args_is_help=True)

ROLES = ("cluster-admin", "edit", "view")
Output = Annotated[str, typer.Option("--output", "-o", help="table, wide, yaml, json or name.")]


def _users(values: list[str]) -> list[dict[str, str]]:
    users = []
    for value in values:
        name, _, role = value.partition("=")
        if not name or role not in ROLES:
            raise InvalidInput(
                f"--user {value!r}: expected NAME=ROLE with ROLE one of {', '.join(ROLES)}",
                field="--user",
            )
        users.append({"name": name, "role": role})
    return users


def _labels(values: list[str]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise InvalidInput(
                f"--node-selector {value!r}: expected KEY=VALUE", field="--node-selector"
            )
        labels[key] = item
    return labels


@app.command()
def create(
    name: str,
    user: Annotated[
        list[str] | None,
        typer.Option("--user", "-u", help="NAME=ROLE (cluster-admin, edit, view); repeatable."),
    ] = None,
    node_selector: Annotated[
        list[str] | None,
        typer.Option("--node-selector", help="KEY=VALUE of the team's nodes to use; repeatable."),
    ] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    team: TeamOption = None,
) -> None:
    """Create a Kled Cluster (team owners and admins)."""
    chosen = STATE.team_for(team)
    spec: dict[str, Any] = {"users": _users(user or [])}
    if node_selector:
        spec["nodeSelector"] = _labels(node_selector)
    if description:
        spec["description"] = description
    doc = {"kind": "Cluster", "metadata": {"name": name}, "spec": spec}
    with STATE.client() as client:
        client.post(f"/api/v1/teams/{chosen}/clusters", doc)
    out(f"cluster/{name} created")


@app.command("list")
def list_clusters(output: Output = "table", team: TeamOption = None) -> None:
    """List the team's clusters."""
    check_format(output)
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        docs = client.list_all(f"/api/v1/teams/{chosen}/clusters")
    if not docs and output in ("table", "wide"):
        note("no clusters yet: create one with `kled cluster create NAME`")
        return
    out(show("Cluster", docs, output, single=False))


@app.command()
def delete(name: str, team: TeamOption = None) -> None:
    """Delete a cluster and everything in it; its kubeconfig tokens stop working."""
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        answer = client.delete(f"/api/v1/teams/{chosen}/clusters/{name}")
    out(f"cluster/{name} {answer.get('result') or 'deleted'}")


@app.command()
def kubeconfig(
    name: str,
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", help="Issue it for this user (cluster-admins only)."),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Write here (mode 600) instead of printing it."),
    ] = None,
    team: TeamOption = None,
) -> None:
    """Print (or write) a kubeconfig for the cluster, with a token for it alone."""
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        answer = client.post(f"/k8s/{chosen}/{name}/kled/token", {"user": user} if user else {})
    text = render(
        answer["server"],
        chosen,
        name,
        answer["user"],
        answer["token"],
        answer["certificateAuthorityData"],
    )
    if file is None:
        out(text.rstrip("\n"))
        return
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    note(f"wrote {file}: kubectl --kubeconfig {file} get ns  (role {answer['role']})")


@app.command("node-token")
def node_token(
    name: str,
    ttl: Annotated[str, typer.Option("--ttl", help="How long it may be used to join.")] = "1h",
    team: TeamOption = None,
) -> None:
    """A join token for an external node of the cluster: a machine whose agent joins with
    it runs this cluster's pods only (cluster-admins; docs/clusters.md)."""
    chosen = STATE.team_for(team)
    with STATE.client() as client:
        answer = client.post(f"/k8s/{chosen}/{name}/kled/node-token", {"ttl": ttl})
    out(answer["token"])
    note(f"expires {answer['expiresAt']}: kled agent --server URL --token TOKEN --name NODE")


def render(server: str, team: str, cluster: str, user: str, token: str, ca_data: str) -> str:
    """A kubeconfig with one cluster (``server``: its URL, ``ca_data``: the CA, base64),
    one user and one current context."""
    context = f"{team}-{cluster}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {"server": server, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": f"{user}@{context}", "user": {"token": token}}],
        "contexts": [
            {
                "name": context,
                "context": {
                    "cluster": context,
                    "user": f"{user}@{context}",
                    "namespace": "default",
                },
            }
        ],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)
