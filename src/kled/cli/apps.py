"""``kled app restart|scale``: act on a running app without editing its YAML.

``restart`` sets the annotation ``kled.io/restartedAt`` to now, which the scheduler turns
into a new generation of every replica (the agent restarts each one); ``scale`` writes the
new ``spec.replicas``. Both are a read, a change and a ``PUT`` with the resourceVersion just
read, retried when someone else wrote in between, so a concurrent edit is never undone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from kled.cli.client import Client
from kled.cli.output import out
from kled.cli.state import STATE, EnvOption, TeamOption
from kled.errors import Conflict, InvalidInput, NotFound
from kled.resources.registry import RESTARTED_AT as RESTARTED_AT

app = typer.Typer(no_args_is_help=True)


_TRIES = 20


def update_app(
    client: Client, team: str, env: str, name: str, change: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Read the app, ``change`` it in place, write it back; retried on a conflict."""
    path = f"/api/v1/teams/{team}/environments/{env}/apps/{name}"
    for attempt in range(_TRIES):
        try:
            doc: dict[str, Any] = client.get(path)
        except NotFound:
            raise NotFound(f"app/{name} not found in {team}/{env}: see `kled get apps`") from None
        change(doc)
        doc.pop("status", None)
        try:
            written: dict[str, Any] = client.put(path, doc)
            return written
        except Conflict:
            if attempt == _TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@app.command()
def restart(name: str, env: EnvOption = None, team: TeamOption = None) -> None:
    """Restart every replica of an app."""
    chosen_team, chosen_env = STATE.team_for(team), STATE.env_for(env)

    def mark(doc: dict[str, Any]) -> None:
        meta = doc.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), RESTARTED_AT: _now()}

    with STATE.client() as client:
        update_app(client, chosen_team, chosen_env, name, mark)
    out(f"app/{name} restarted")


@app.command()
def scale(
    name: str,
    replicas: Annotated[int, typer.Argument(help="How many replicas to run.")],
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """Run N replicas of an app."""
    if not 0 <= replicas <= 1000:
        raise InvalidInput("must be between 0 and 1000", field="replicas")
    chosen_team, chosen_env = STATE.team_for(team), STATE.env_for(env)

    def set_replicas(doc: dict[str, Any]) -> None:
        doc.setdefault("spec", {})["replicas"] = replicas

    with STATE.client() as client:
        update_app(client, chosen_team, chosen_env, name, set_replicas)
    out(f"app/{name} scaled to {replicas}")
