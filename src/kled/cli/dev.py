"""``kled dev [APP]``: develop an app live in its environment (Kledspace).

Reads ``kled.yaml`` (``-f``; by default in this folder or the repository's root above
it), swaps APP for its dev replica, keeps the folders in sync, runs and restarts the dev
command, and restores the app when it ends: Ctrl-C, SIGTERM, the terminal closing (SIGHUP).
``kled dev stop APP`` ends someone's session from anywhere (the app is restored);
``kled dev --status APP`` says whether the app is in one, and whose.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Annotated

import typer

from kled.cli import devconfig
from kled.cli.devloop import DevLoop, dev_path
from kled.cli.exec import endpoint
from kled.cli.output import out
from kled.cli.state import STATE, EnvOption, TeamOption
from kled.errors import InvalidInput

CONFIG_NAME = "kled.yaml"


def find_config(start: Path) -> Path:
    """``kled.yaml`` in ``start`` or the nearest folder above it that has one, up to the
    repository's root (the folder with ``.git``)."""
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
        if (folder / ".git").exists():
            break
    raise InvalidInput(
        f"no {CONFIG_NAME} here or up to the repository's root: pass -f FILE", field="-f"
    )


async def _session(loop_: DevLoop) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        await loop_.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def dev(
    ctx: typer.Context,
    app: Annotated[
        str | None,
        typer.Argument(metavar="[APP | stop APP]", help="The app of kled.yaml to develop."),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="The dev config (default: kled.yaml).")
    ] = None,
    status: Annotated[
        bool, typer.Option("--status", help="Say whether APP is in a dev session, and whose.")
    ] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """Develop APP live: its dev replica in the environment, your folder synced into it,
    its command restarted on change; the app is restored when this ends."""
    rest = list(ctx.args)
    chosen_team = STATE.team_for(team)
    if app == "stop" or status:
        name = rest[0] if app == "stop" and len(rest) == 1 else app
        if name is None or (app == "stop" and len(rest) != 1):
            raise InvalidInput("say which app: kled dev stop APP / --status APP", field="APP")
        if name.startswith("ws/"):
            raise InvalidInput("a workspace has no dev session to show or end", field="APP")
        _session_command(chosen_team, STATE.env_for(env), name, app == "stop", output)
        return
    if rest:
        raise InvalidInput(f"unexpected argument {rest[0]!r}", field="APP")
    path = file if file is not None else find_config(Path.cwd())
    config = devconfig.load(path)
    name, target = devconfig.target(config, app, path)
    # an app belongs to an environment; a workspace (ws/NAME) to the team only
    chosen_env = "" if name.startswith("ws/") else STATE.env_for(env)
    if not target.command:
        out("(no command in kled.yaml: syncing only)")
    with STATE.client() as client:
        if not name.startswith("ws/"):
            app_doc = client.get(
                f"/api/v1/teams/{chosen_team}/environments/{chosen_env}/apps/{name}"
            )
            devconfig.check_roots(name, target, app_doc, path.name)
        runner = DevLoop(
            client, endpoint(), (chosen_team, chosen_env), name, target, path.parent.resolve()
        )
        asyncio.run(_session(runner))


def _session_command(team: str, env: str, app: str, stop: bool, output: str) -> None:
    """``kled dev stop APP`` or ``kled dev --status APP``."""
    with STATE.client() as client:
        if stop:
            client.request("DELETE", dev_path(team, env, app))
            out(f"app {app} restored")
            return
        answer = client.get(dev_path(team, env, app))
    if output == "json":
        out(json.dumps(answer))
    elif answer.get("active"):
        out(f"app {app}: dev session {answer.get('session')} of {answer.get('user')} "
            f"since {answer.get('since')}")  # fmt: skip
    else:
        out(f"app {app}: no dev session")


def register(root: typer.Typer) -> None:
    root.command(
        "dev", context_settings={"allow_extra_args": True, "ignore_unknown_options": False}
    )(dev)
