"""What one run of the CLI knows: the global options and the context they pick.

The global options (``--server``, ``--token``, ``--team``, ``--context``, ``--debug``, and
their ``KLED_*`` environment variables) override the current context; a command's own
``--team``/``-e`` override both. Every command asks here for its client, team and
environment, so the rules of precedence are written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from kled.cli.client import Client
from kled.cli.config import CliConfig, Context
from kled.errors import InvalidInput
from kled.resources.registry import KindInfo, Scope


def read_token_file(path: Path, flag: str = "--token-file") -> str:
    """The token in ``path`` (its first line, stripped): a token given this way stays out of
    the process list and the shell history."""
    try:
        token = path.read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise InvalidInput(f"cannot read the token in {path}: {reason}", field=flag) from None
    if not token or not token[0].strip():
        raise InvalidInput(f"{path} holds no token", field=flag)
    return token[0].strip()


#: the ``--team`` every command takes, on top of the global one
TeamOption = Annotated[
    str | None,
    typer.Option(
        "--team",
        "-t",
        help="Team (default: --team before the command, $KLED_TEAM, or the context's team).",
        show_default=False,
    ),
]
#: ``-e/--env`` of commands on environment-scoped kinds
EnvOption = Annotated[
    str | None,
    typer.Option("--env", "-e", help="Environment (default: the context's).", show_default=False),
]


@dataclass
class Globals:
    """The global options of this run."""

    debug: bool = False
    team: str | None = None
    context: str | None = None
    server: str | None = None
    token: str | None = None
    _config: CliConfig | None = None

    def config(self) -> CliConfig:
        if self._config is None:
            self._config = CliConfig.load()
        return self._config

    def active(self) -> Context | None:
        return self.config().active(self.context)

    def client(self) -> Client:
        """A client for the chosen server, with the chosen token."""
        ctx = self.active()
        server = self.server or (ctx.server if ctx else None)
        if not server:
            raise InvalidInput(
                "no server to talk to: run `kled login --server URL --token TOKEN` "
                "(or `kled up`), or pass --server",
            )
        token = self.token or (ctx.token if ctx else "")
        socket = None
        if ctx is not None and ctx.socket and (not self.server or self.server == ctx.server):
            socket = ctx.socket
        return Client(server, token, socket=socket)

    def team_or_none(self, option: str | None = None) -> str | None:
        if option:
            return option
        if self.team:
            return self.team
        ctx = self.active()
        return ctx.team if ctx else None

    def team_for(self, option: str | None = None) -> str:
        """The team a command acts in; bad input when there is none."""
        team = self.team_or_none(option)
        if not team:
            raise InvalidInput(
                "no team: pass --team TEAM, or set one with `kled context set --team TEAM`",
            )
        return team

    def env_or_none(self, option: str | None = None) -> str | None:
        if option:
            return option
        ctx = self.active()
        return ctx.environment if ctx else None

    def env_for(self, option: str | None = None) -> str:
        env = self.env_or_none(option)
        if not env:
            raise InvalidInput(
                "no environment: pass -e ENV, or set one with `kled context set --env ENV`",
            )
        return env

    def place(self, info: KindInfo, team: str | None, env: str | None) -> tuple[str, str]:
        """(team, environment) for a kind: "" where the kind has none."""
        if info.scope is Scope.SERVER:
            return "", ""
        chosen_team = self.team_for(team)
        if info.scope is Scope.TEAM:
            return chosen_team, ""
        return chosen_team, self.env_for(env)


STATE = Globals()
