"""``kled login``, ``kled logout`` and ``kled context …``: which server, as whom.

``login`` checks the token with the server (``GET /api/v1/whoami``) before it saves
anything, so a context in the file is one that worked when it was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from kled.cli.client import Client
from kled.cli.config import Context
from kled.cli.output import align, out
from kled.cli.state import STATE, read_token_file
from kled.errors import InvalidInput

app = typer.Typer(no_args_is_help=True)


def _default_name(server: str) -> str:
    parts = urlsplit(server if "//" in server else f"http://{server}")
    return parts.netloc or server


def login(
    server: Annotated[str | None, typer.Option("--server", help="Server URL.")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Bearer token.")] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="Read the token from this file.", show_default=False),
    ] = None,
    team: Annotated[str | None, typer.Option("--team", "-t", help="Default team.")] = None,
    env: Annotated[str | None, typer.Option("--env", "-e", help="Default environment.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Context name.")] = None,
    socket: Annotated[
        str | None, typer.Option("--socket", help="The server's Unix socket, when local.")
    ] = None,
) -> None:
    """Check a token with a server and save them as a context, made current."""
    url = server or STATE.server
    if token and token_file:
        raise InvalidInput("give --token or --token-file, not both", field="--token-file")
    secret = token or (read_token_file(token_file) if token_file else None) or STATE.token
    if not url:
        raise InvalidInput("pass --server URL (e.g. http://127.0.0.1:7080)")
    if not secret:
        raise InvalidInput("pass --token-file PATH, --token TOKEN or set KLED_TOKEN")
    if "//" not in url:
        url = f"http://{url}"
    with Client(url, secret, socket=socket) as client:
        who = client.get("/api/v1/whoami")
    chosen_team = team or STATE.team or who.get("team") or None
    context = Context(
        name=name or _default_name(url),
        server=url.rstrip("/"),
        token=secret,
        socket=socket,
        team=chosen_team,
        environment=env,
    )
    config = STATE.config()
    config.put(context)
    config.current = context.name
    config.save()
    role = "server administrator" if who.get("serverAdmin") else f"{who.get('role')}"
    where = f", team {chosen_team}" if chosen_team else ""
    out(
        f"logged in to {context.server} as {who.get('username')} ({role}{where}); "
        f"context {context.name!r} is current"
    )


def logout(
    name: Annotated[str | None, typer.Option("--name", help="Context (default: current).")] = None,
) -> None:
    """Forget a context and its token (the current one by default)."""
    config = STATE.config()
    target = name or STATE.context or config.current
    if not target:
        raise InvalidInput("not logged in: there is no current context")
    config.remove(target)
    config.save()
    out(f"logged out: context {target!r} removed")


@app.command("list")
def list_contexts() -> None:
    """List the contexts; the current one is marked with *."""
    config = STATE.config()
    rows = [["CURRENT", "NAME", "SERVER", "TEAM", "ENV", "SOCKET"]]
    for c in config.contexts:
        rows.append([
            "*" if c.name == config.current else "",
            c.name, c.server, c.team or "-", c.environment or "-", c.socket or "-",
        ])  # fmt: skip
    out(align(rows))


@app.command("use")
def use(name: str) -> None:
    """Make a context the current one."""
    config = STATE.config()
    config.get(name)
    config.current = name
    config.save()
    out(f"switched to context {name!r}")


@app.command("current")
def current() -> None:
    """Print the name of the current context."""
    config = STATE.config()
    if not config.current:
        raise InvalidInput("there is no current context: run `kled login` or `kled up`")
    out(config.current)


@app.command("delete")
def delete(name: str) -> None:
    """Delete a context."""
    config = STATE.config()
    config.remove(name)
    config.save()
    out(f"context {name!r} deleted")


@app.command("set")
def set_defaults(
    team: Annotated[str | None, typer.Option("--team", "-t", help="Default team.")] = None,
    env: Annotated[str | None, typer.Option("--env", "-e", help="Default environment.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Context (default: current).")] = None,
) -> None:
    """Set the default team or environment of a context (\"\" clears one)."""
    config = STATE.config()
    target = config.active(name or STATE.context)
    if target is None:
        raise InvalidInput("there is no current context: run `kled login` or `kled up`")
    if team is not None:
        target.team = team or None
    if env is not None:
        target.environment = env or None
    config.save()
    out(
        f"context {target.name!r}: team {target.team or '-'}, "
        f"environment {target.environment or '-'}"
    )


def register(root: typer.Typer) -> None:
    root.command()(login)
    root.command()(logout)
    root.add_typer(app, name="context", help="List, switch and delete contexts.")
