"""``kled logs APP``: an app's log lines, read from the Message Office through the server.

The server answers with one JSON line per log line (``{"replica", "stream", "line",
"time"}``); here each goes back where the replica wrote it — its stdout lines to stdout,
its stderr lines to stderr — so that ``kled logs api 2>/dev/null`` keeps only what the app
printed. When the app has several replicas and no ``--replica`` is chosen, each line says
whose it is, ``[api-0] …``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer

from kled.cli.client import Client, error_from
from kled.cli.state import STATE, EnvOption, TeamOption
from kled.errors import InvalidInput, NotFound, Unavailable


def _app_path(team: str, env: str, name: str) -> str:
    return f"/api/v1/teams/{team}/environments/{env}/apps/{name}"


def format_line(entry: dict[str, Any], app: str, prefixed: bool) -> str:
    """One log line as the user reads it."""
    text = str(entry.get("line", ""))
    if prefixed:
        return f"[{app}-{entry.get('replica')}] {text}"
    return text


def stream_logs(client: Client, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The server's JSON lines, as they come; errors as Kled's own."""
    # The CLI's client has no streaming of plain lines; its httpx client is the seam.
    http: httpx.Client = client._http
    try:
        with http.stream(
            "GET", path, params=params, timeout=httpx.Timeout(30, read=None)
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise error_from(response)
            for raw in response.iter_lines():
                if raw.strip():
                    yield json.loads(raw)
    except httpx.TransportError as e:
        raise Unavailable(f"lost the connection to {client.where} while reading logs: {e}") from e


def logs(
    app: Annotated[str, typer.Argument(help="The app whose logs to show.")],
    env: EnvOption = None,
    team: TeamOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep showing new lines.")] = False,
    replica: Annotated[
        int | None, typer.Option("--replica", help="Only this replica (its index).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only lines newer than this: 30s, 5m, 2h.")
    ] = None,
) -> None:
    """Show an app's log lines (stdout and stderr of its replicas)."""
    if replica is not None and replica < 0:
        raise InvalidInput("must be 0 or more", field="--replica")
    chosen_team = STATE.team_for(team)
    chosen_env = STATE.env_for(env)
    path = _app_path(chosen_team, chosen_env, app)
    with STATE.client() as client:
        try:
            doc = client.get(path)
        except NotFound:
            raise NotFound(
                f"app/{app} not found in {chosen_team}/{chosen_env}: see `kled get apps`"
            ) from None
        replicas = (doc.get("spec") or {}).get("replicas", 1)
        prefixed = replica is None and isinstance(replicas, int) and replicas > 1
        params: dict[str, Any] = {"follow": "true" if follow else "false"}
        if since:
            params["since"] = since
        if replica is not None:
            params["replica"] = replica
        for entry in stream_logs(client, f"{path}/logs", params):
            line = format_line(entry, app, prefixed) + "\n"
            target = sys.stderr if entry.get("stream") == "stderr" else sys.stdout
            target.write(line)
            target.flush()


def register(root: typer.Typer) -> None:
    root.command("logs")(logs)
