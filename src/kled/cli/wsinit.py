"""``initializeCommand``: the one lifecycle hook that runs on the user's machine.

The spec runs it on the client at every ``up``, in the workspace folder, before anything
is built: it prepares files the container then sees (a generated ``.env``, a fetched
secret, a submodule). ``kled ws up`` of a folder runs it here, before the folder is
packed, so what it writes is uploaded with the rest; as in the reference, a string runs
under ``/bin/sh -c``, an array as it is, an object's commands at the same time, with this
process's environment, and the output is shown as it comes. A failure stops ``up`` with
one line (the command, its exit code and its last output lines); nothing is uploaded or
applied. A git source has no folder here: its initializeCommand is not run (the node
never runs it: it is the client's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from kled.cli.output import note
from kled.errors import KledError
from kled.workspace.devcontainer import load_config
from kled.workspace.discovery import select_config
from kled.workspace.properties import Command, ExecCommand, ParallelCommands

HOOK = "initializeCommand"
#: how many of a failed command's last lines its error shows (joined by " | ")
TAIL_LINES = 3


class InitializeFailed(KledError):
    """initializeCommand exited non-zero (or could not start)."""


def argvs(command: Command) -> dict[str, list[str]]:
    """The argv of each command to run at once ("" names a lone one)."""
    if isinstance(command, ParallelCommands):
        return {name: argvs(part)[""] for name, part in command.commands.items()}
    if isinstance(command, ExecCommand):
        return {"": list(command.argv)}
    return {"": ["/bin/sh", "-c", command.script]}


def initialize(folder: Path, config: str | None) -> None:
    """Run the folder's initializeCommand, if it has one, in the folder."""
    found = select_config(folder, config)
    if found is None:
        return
    command = load_config(folder, found, env=dict(os.environ)).config.initialize_command
    if command is None:
        return
    runs = {name: argv for name, argv in argvs(command).items() if argv}
    note(f"running {HOOK} in {folder}")
    results: dict[str, tuple[int, str]] = {}

    def one(name: str, argv: list[str]) -> None:
        results[name] = _run(folder, argv, f"{name}: " if name else "")

    threads = [threading.Thread(target=one, args=item) for item in runs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in runs:
        code, last = results[name]
        if code != 0:
            what = f"{HOOK}{'.' + name if name else ''}"
            raise InitializeFailed(f"{what} exited with code {code}{': ' + last if last else ''}")


def _run(folder: Path, argv: list[str], prefix: str) -> tuple[int, str]:
    """Run ``argv`` in ``folder``, its output shown on stderr; (exit code, last lines)."""
    try:
        proc = subprocess.Popen(
            argv,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as e:
        return 127, f"{argv[0]}: {e.strerror}"
    last: deque[str] = deque(maxlen=TAIL_LINES)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        print(f"  | {prefix}{line}", file=sys.stderr, flush=True)
        if line.strip():
            last.append(line.strip())
    return proc.wait(), " | ".join(last)
