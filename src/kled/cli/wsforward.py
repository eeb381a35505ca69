"""``kled ws forward NAME LOCAL[:REMOTE]``: a laptop port that reaches a workspace's port.

For laptops off the mesh (on it, ``<ws>.<team>.<zone>:PORT`` answers already). It is SSH's
own local forwarding (``ssh -N -L``) over the same path as ``kled ws ssh``: OpenSSH's client
with ``ProxyCommand kled ws proxy NAME``, so through the API; the workspace's SSH server
makes each forwarded connection from the workspace's network namespace
(``agent/wsreach.py``), so ``REMOTE`` is a port on the workspace's own ``localhost``.
The local port listens on ``127.0.0.1`` only. It runs until interrupted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Annotated

import typer

from kled.cli import wsssh
from kled.cli.output import note
from kled.cli.state import STATE, TeamOption
from kled.errors import InvalidInput, Unavailable

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The workspace's name.")]
PortsArg = Annotated[
    str, typer.Argument(metavar="LOCAL[:REMOTE]", help="The laptop's port, and the workspace's.")
]


def parse_ports(text: str) -> tuple[int, int]:
    """``LOCAL[:REMOTE]`` as (local, remote); REMOTE defaults to LOCAL."""
    local, sep, remote = text.partition(":")
    remote = remote if sep else local
    if not (local.isdigit() and remote.isdigit()) or not all(
        1 <= int(p) <= 65535 for p in (local, remote)
    ):
        raise InvalidInput(
            f"{text!r} is not LOCAL[:REMOTE] with ports from 1 to 65535", field="LOCAL[:REMOTE]"
        )
    return int(local), int(remote)


def forward_argv(team: str, name: str, local: int, remote: int) -> list[str]:
    ssh = shutil.which("ssh")
    if ssh is None:
        raise Unavailable("no ssh client: install OpenSSH's (Debian: openssh-client)")
    argv = [ssh, "-F", "none", "-N", "-o", "ExitOnForwardFailure=yes"]
    for keyword, value in wsssh.options(team, name, STATE.context):
        argv += ["-o", f"{keyword}={value}"]
    argv += ["-L", f"127.0.0.1:{local}:localhost:{remote}", wsssh.host_alias(team, name)]
    return argv


def forward_command(name: NameArg, ports: PortsArg, team: TeamOption = None) -> None:
    """Forward 127.0.0.1:LOCAL on this machine to the workspace's port REMOTE (default
    LOCAL), through the API, until interrupted."""
    local, remote = parse_ports(ports)
    chosen = STATE.team_for(team)
    argv = forward_argv(chosen, wsssh.check_name(name), local, remote)
    env = dict(os.environ)
    if STATE.server:
        env["KLED_SERVER"] = STATE.server
    if STATE.token:
        env["KLED_TOKEN"] = STATE.token
    note(f"forwarding 127.0.0.1:{local} to workspace {name} port {remote} (Ctrl-C stops)")
    try:
        done = subprocess.run(argv, env=env, check=False)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    raise typer.Exit(done.returncode)
