"""``kled exec APP [--replica N] -- CMD…``: run a command inside a replica of an app.

stdin is passed through (``-i`` is implied; ``--no-stdin`` sends none), the command's
stdout and stderr come back to the terminal's, and ``kled exec`` exits with the command's
exit code, so it composes in scripts like ``podman exec`` or ``kubectl exec``. Ctrl-C
sends SIGINT to the command once; a second Ctrl-C leaves.

``--tty`` (``-T``; ``-t`` is ``--team`` in every command) gives the command a terminal
of its own, the size of this one (and resized with it): this terminal goes raw while it
runs, so keys, Ctrl-C included, reach the command as typed and full-screen programs
work; stdout and stderr then come back together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import threading
import tty as ttymode
from collections.abc import Iterator
from typing import Annotated

import typer

from kled.cli.exec_client import Endpoint, ExecStream, open_exec
from kled.cli.state import STATE, EnvOption, TeamOption
from kled.errors import InvalidInput


def endpoint() -> Endpoint:
    """Where the CLI's streams go: the chosen server, token and local socket."""
    client = STATE.client()
    try:
        return Endpoint(client.server, client.token, client.socket)
    finally:
        client.close()


async def _copy_out(reader: asyncio.StreamReader, fd: int) -> None:
    while chunk := await reader.read(65536):
        view = memoryview(chunk)
        while view:
            written = await asyncio.to_thread(os.write, fd, view)
            view = view[written:]


async def _copy_in(stream: ExecStream) -> None:
    # A daemon thread of its own, not the loop's executor: a read of a terminal blocks
    # until a key is pressed, and asyncio.run would wait for it after the command ended.
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def read() -> None:
        while True:
            try:
                chunk = os.read(0, 65536)
            except OSError:
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop).result()
            except RuntimeError:  # the loop is gone: the command ended first
                return
            if not chunk:
                return

    threading.Thread(target=read, name="kled-exec-stdin", daemon=True).start()
    while chunk := await chunks.get():
        await stream.write(chunk)
    await stream.close_stdin()


def terminal_size() -> tuple[int, int]:
    """(cols, rows) of this terminal, 80 by 24 without one (or one that says 0)."""
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.columns or 80, size.lines or 24
    return 80, 24


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """``fd``'s terminal raw for the block (nothing if it is no terminal), restored after."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    ttymode.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_exec(
    team: str,
    env: str,
    app: str,
    command: list[str],
    replica: int | None,
    stdin: bool,
    *,
    route: str | None = None,
    tty: bool = False,
) -> int:
    if tty:
        with raw_terminal(0):
            return await _run(team, env, app, command, replica, stdin, route, terminal_size())
    return await _run(team, env, app, command, replica, stdin, route, None)


async def _run(
    team: str,
    env: str,
    app: str,
    command: list[str],
    replica: int | None,
    stdin: bool,
    route: str | None,
    size: tuple[int, int] | None,
) -> int:
    stream = await open_exec(
        endpoint(), team, env, app, command, replica=replica, route=route, tty=size
    )
    loop = asyncio.get_running_loop()
    interrupts = 0
    pending: set[asyncio.Task[None]] = set()

    def on_resize() -> None:
        task = loop.create_task(stream.resize(*terminal_size()))
        pending.add(task)
        task.add_done_callback(pending.discard)

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        task = loop.create_task(stream.signal(signal.SIGINT) if interrupts == 1 else stream.close())
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    if size is not None:
        loop.add_signal_handler(signal.SIGWINCH, on_resize)
    feeder = asyncio.create_task(_copy_in(stream)) if stdin else None
    if not stdin:
        await stream.close_stdin()
    try:
        await asyncio.gather(_copy_out(stream.stdout, 1), _copy_out(stream.stderr, 2))
        if interrupts > 1:
            return 130
        return await stream.wait()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGWINCH)
        if feeder is not None:
            feeder.cancel()
        await stream.close()


def exec_command(
    ctx: typer.Context,
    app: Annotated[str, typer.Argument(metavar="APP", help="The app to run the command in.")],
    replica: Annotated[
        int | None, typer.Option("--replica", help="The replica's index (default: the first).")
    ] = None,
    no_stdin: Annotated[
        bool, typer.Option("--no-stdin", help="Send no stdin: the command reads EOF.")
    ] = False,
    tty: Annotated[
        bool,
        typer.Option(
            "--tty", "-T", help="Give the command a terminal (this one's size); -t is --team."
        ),
    ] = False,
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """Run `-- CMD…` inside a replica of APP, with stdin, stdout and stderr passed
    through; exits with the command's exit code."""
    command = list(ctx.args)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidInput("give the command after --: kled exec APP -- CMD…", field="CMD")
    if replica is not None and replica < 0:
        raise InvalidInput("must be 0 or more", field="--replica")
    chosen_team, chosen_env = STATE.team_for(team), STATE.env_for(env)
    code = asyncio.run(
        run_exec(chosen_team, chosen_env, app, command, replica, not no_stdin, tty=tty)
    )
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    raise typer.Exit(code)


def register(root: typer.Typer) -> None:
    root.command(
        "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(exec_command)
