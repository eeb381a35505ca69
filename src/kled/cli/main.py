"""The ``kled`` command: global options, the command groups, and how errors end a run.

Every failure ends the same way, so that scripts can rely on it: one line on stderr,
``error: …``, and the exit code ``2`` for bad input (a bad flag, a document that does not
validate, a 4xx ``Invalid`` answer) or ``1`` for anything else (the server unreachable, a
refused token, a conflict). ``--debug`` adds the traceback and debug logging.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

import kled
from kled.cli import (
    agents,
    apps,
    contexts,
    envs,
    logs,
    nodes,
    resources,
    secrets,
    server,
    teams,
    tokens,
    top,
    users,
)
from kled.cli.output import err_console, out
from kled.cli.state import STATE, read_token_file
from kled.errors import InvalidInput, KledError


def _flag_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """A flag takes no value, so its help shows no ``<bool>`` type (Typer has no setting)."""
    if self.is_flag and not self.count:
        return None
    return _option_type(self, ctx)


_option_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

app = typer.Typer(
    name="kled",
    help="Kled: develop, run and debug your team's services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    team: Annotated[
        str | None, typer.Option("--team", "-t", envvar="KLED_TEAM", help="Default team.")
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="Use this context rather than the current.")
    ] = None,
    server_url: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="KLED_SERVER",
            help="Server URL, or several replicas' URLs: URL1,URL2 (overrides the context).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="KLED_TOKEN", help="Bearer token (overrides the context)."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            envvar="KLED_TOKEN_FILE",
            help="Read the bearer token from this file (keeps it out of `ps`).",
            show_default=False,
        ),
    ] = None,
) -> None:
    STATE.debug = STATE.debug or debug
    STATE.team = team or None
    STATE.context = context or None
    STATE.server = server_url or None
    if token and token_file:
        raise InvalidInput("give --token or --token-file, not both", field="--token-file")
    STATE.token = token or (read_token_file(token_file) if token_file else None)
    if STATE.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def version() -> None:
    """Print the version of this kled."""
    out(f"kled {kled.__version__}")


def _mount() -> None:
    for module in (server, contexts, resources, agents, logs):
        module.register(app)
    app.add_typer(teams.app, name="team", help="Create, list and delete teams.")
    app.add_typer(users.app, name="user", help="Create and list the users of a team.")
    app.add_typer(tokens.app, name="token", help="Create, list and revoke API tokens.")
    app.add_typer(envs.app, name="env", help="Create, list, clone and delete environments.")
    app.add_typer(secrets.app, name="secret", help="Set and read the keys of a secret.")
    app.add_typer(nodes.app, name="node", help="Join tokens, and the nodes that run apps.")
    app.add_typer(apps.app, name="app", help="Restart and scale apps.")
    app.add_typer(top.app, name="top", help="What apps and nodes use now: CPU, memory.")
    from kled.cli import rollout

    app.add_typer(rollout.app, name="rollout", help="Rolling updates: status, history, undo.")
    from kled.cli import jobs

    app.add_typer(jobs.app, name="job", help="Jobs: runs, attempts, logs, run-now.")
    from kled.cli import ips

    app.add_typer(ips.app, name="ip", help="Who holds which address of a team's block.")
    from kled.cli import devices, intercepts

    app.add_typer(intercepts.app, name="intercept", help="Point an app's traffic at a device.")
    app.add_typer(devices.app, name="device", help="Join, configure and revoke devices.")
    from kled.cli import gitops

    app.add_typer(gitops.app, name="gitops", help="Environments kept in step with git.")
    from kled.cli import workspaces

    app.add_typer(workspaces.app, name="ws", help="Workspaces: dev containers on the team's nodes.")
    from kled.cli import services

    app.add_typer(services.app, name="service", help="Managed services: databases, caches.")
    from kled.cli import clusters

    app.add_typer(clusters.app, name="cluster", help="Kled Clusters: a Kubernetes API per tenant.")
    from kled.cli import ui

    ui.register(app)
    from kled.cli import exec as exec_cli

    exec_cli.register(app)
    from kled.cli import dev

    dev.register(app)


def _mount_policy(args: list[str]) -> None:
    """Mount ``kled policy`` when this run may need it.

    The policy engine takes longer to import than the rest of the CLI together, so the
    group is loaded only for ``kled policy …``, for help without a command, and for shell
    completion — every other command starts twice as fast without it.
    """
    if not _may_need_policy(args) or any(g.name == "policy" for g in app.registered_groups):
        return
    try:
        from kled.cli import policy  # a colleague's group, mounted when it imports
    except ImportError:
        return
    app.add_typer(policy.app, name="policy", help="Test and report kPolicy policies.")


_VALUED_GLOBALS = frozenset({"--team", "-t", "--context", "--server", "--token", "--token-file"})


def _may_need_policy(args: list[str]) -> bool:
    if "_KLED_COMPLETE" in os.environ:  # shell completion asks about every group
        return True
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _VALUED_GLOBALS:
            skip = True
        elif not arg.startswith("-"):
            return arg == "policy"
    return True


_mount()


def fail(message: str, code: int) -> int:
    err_console.print(f"[bold red]error:[/bold red] {message}", markup=True, highlight=False)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run ``kled`` with ``argv``; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    STATE.debug = "--debug" in args
    _mount_policy(args)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="kled", standalone_mode=False)
    except typer.TyperException as e:
        # Typer carries its own copy of click: its usage errors are known by shape.
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            # Building the error rendered the help already (Rich prints as it formats and
            # leaves the message empty); asking again would print it a second time.
            if e.format_message().strip():
                out(e.format_message())
            return 0
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return fail(_escape(e.format_message()) + hint, e.exit_code)
    except typer.Abort:
        return 130
    except KeyboardInterrupt:
        return 130
    except KledError as e:
        if STATE.debug:
            traceback.print_exc()
        return fail(_escape(str(e)), 2 if isinstance(e, InvalidInput) else 1)
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: still one line, unless asked for more
        if STATE.debug:
            traceback.print_exc()
            return fail(_escape(f"{e.__class__.__name__}: {e}"), 1)
        return fail(
            _escape(f"{e.__class__.__name__}: {e}") + " (run with --debug for the traceback)", 1
        )
    return result if isinstance(result, int) else 0


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text.replace("\n", " ").strip())


def run() -> None:
    """The console entry point (``kled``)."""
    sys.exit(main())
