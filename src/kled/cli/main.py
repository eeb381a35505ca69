"""The ``kled`` command: global options, the command groups, and how errors end a run.

Every failure ends the same way, so that scripts can rely on it: one line on stderr,
``error: …``, and the exit code ``2`` for bad input (a bad flag, a document that does not
validate, a 4xx ``Invalid`` answer) or ``1`` for anything else (the server unreachable, a
refused token, a conflict). ``--debug`` adds the traceback and debug logging.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

import kled
from kled.cli import agents, contexts, logs, resources, server
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


#: groups mounted only when a run may need them (importing them all took over a second
#: of every command's start): name → (module under kled.cli, help)
_GROUPS: dict[str, tuple[str, str]] = {
    "team": ("teams", "Create, list and delete teams."),
    "user": ("users", "Create and list the users of a team."),
    "token": ("tokens", "Create, list and revoke API tokens."),
    "env": ("envs", "Create, list, clone and delete environments."),
    "secret": ("secrets", "Set and read the keys of a secret."),
    "node": ("nodes", "Join tokens, and the nodes that run apps."),
    "app": ("apps", "Restart and scale apps."),
    "top": ("top", "What apps and nodes use now: CPU, memory."),
    "rollout": ("rollout", "Rolling updates: status, history, undo."),
    "job": ("jobs", "Jobs: runs, attempts, logs, run-now."),
    "ip": ("ips", "Who holds which address of a team's block."),
    "intercept": ("intercepts", "Point an app's traffic at a device."),
    "device": ("devices", "Join, configure and revoke devices."),
    "gitops": ("gitops", "Environments kept in step with git."),
    "ws": ("workspaces", "Workspaces: dev containers on the team's nodes."),
    "service": ("services", "Managed services: databases, caches."),
    "cluster": ("clusters", "Kled Clusters: a Kubernetes API per tenant."),
    "policy": ("policy", "Test and report kPolicy policies."),
}
#: top-level commands of their own module (``register(app)``), mounted the same way
_COMMANDS: dict[str, str] = {"ui": "ui", "exec": "exec", "dev": "dev"}
_VALUED_GLOBALS = frozenset({"--team", "-t", "--context", "--server", "--token", "--token-file"})


def _mount_group(name: str) -> None:
    if any(g.name == name for g in app.registered_groups):
        return
    module_name, help_text = _GROUPS[name]
    module = importlib.import_module(f"kled.cli.{module_name}")
    if name == "ws":
        from kled.cli import wsforward

        module.app.command("forward")(wsforward.forward_command)
    app.add_typer(module.app, name=name, help=help_text)


def _mount_command(name: str) -> None:
    if any(c.name == name for c in app.registered_commands):
        return
    importlib.import_module(f"kled.cli.{_COMMANDS[name]}").register(app)


def _mount(args: list[str]) -> None:
    """Mount what this run may need: the group or command it names, or everything (for
    help without a command, shell completion, or a word that is no command, so that
    the error can name the commands there are)."""
    word = None if "_KLED_COMPLETE" in os.environ else _command_word(args)
    if word in _GROUPS:
        _mount_group(word)
    elif word in _COMMANDS:
        _mount_command(word)
    elif word is None or word not in _ALWAYS:
        for name in _GROUPS:
            _mount_group(name)
        for name in _COMMANDS:
            _mount_command(name)


def _command_word(args: list[str]) -> str | None:
    """The command a run names (its first word that is not a global option)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _VALUED_GLOBALS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


for _module in (server, contexts, resources, agents, logs):
    _module.register(app)
#: the commands always mounted (they cost little to import)
_ALWAYS = frozenset(
    {str(c.name or c.callback.__name__) for c in app.registered_commands if c.callback}
    | {str(g.name) for g in app.registered_groups}
)


def fail(message: str, code: int) -> int:
    err_console.print(f"[bold red]error:[/bold red] {message}", markup=True, highlight=False)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run ``kled`` with ``argv``; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    STATE.debug = "--debug" in args
    _mount(args)
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
