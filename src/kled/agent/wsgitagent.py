"""A git clone over SSH on the node, with the laptop's SSH agent (``kled ws up git@…``).

While ``kled ws up`` of an SSH git URL waits, the CLI opens the workspace's ``agent``
stream (``…/workspaces/{name}/agent``, exec id ``<team>._ws.<name>.agent``): this agent
runs ``kled.workspace.agentrelay`` for it, a Unix socket ``agent.sock`` (0600) in the
workspace's folder whose connections reach the laptop's ``$SSH_AUTH_SOCK``. The clone
waits a little for that socket, runs with ``SSH_AUTH_SOCK`` set to it (and ``ssh`` in
batch mode: no prompt can hang it), and removes it once done: the agent is forwarded for
the clone only. The server's host key is trusted on first use and kept beside the source
(``known_hosts``), so a later clone of the same workspace checks it.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from kled.agent.exec import Target
from kled.agent.runtime.base import ExecPlan
from kled.resources.hoststate import ReplicaSpec, RuntimeKind
from kled.resources.workspacestate import WS_TOKEN, parse_workspace_id

#: the index of a workspace's agent stream in its exec id
AGENT_INDEX = "agent"
SOCKET = "agent.sock"
KNOWN_HOSTS = "known_hosts"
#: how long a clone waits for the client's agent to be forwarded
AGENT_WAIT = 20.0
#: the command the stream asks for
COMMAND = ["ssh-agent"]
_SSH_URL = re.compile(r"^ssh://|^[\w.-]+@[\w.-]+:")


def is_ssh_url(url: str) -> bool:
    return bool(_SSH_URL.match(url))


class RelayPlanner:
    """The agent stream's only command: the relay on the workspace's socket."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def exec_plan(self, spec: ReplicaSpec, command: list[str]) -> ExecPlan:
        if command != COMMAND:
            return ExecPlan(argv=["false"])
        return ExecPlan(argv=[sys.executable, "-m", "kled.workspace.agentrelay", str(self.socket)])


def relay_target(root: Path, replica_id: str) -> Target | None:
    """The target of ``<team>._ws.<name>.agent`` (the workspace placed here or not yet
    made: the clone comes first)."""
    parsed = parse_workspace_id(replica_id.removesuffix(AGENT_INDEX) + "0")
    if parsed is None:
        return None
    folder = root / parsed[0] / parsed[1]
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    spec = ReplicaSpec(
        team=parsed[0], environment=WS_TOKEN, app=parsed[1], index=0, runtime=RuntimeKind.PROCESS
    )
    return Target(RelayPlanner(folder / SOCKET), spec)


async def clone_env(folder: Path, say: Callable[[str], None]) -> dict[str, str]:
    """What ``git clone`` of an SSH URL runs with: the forwarded agent when the client
    gives one within ``AGENT_WAIT``, batch-mode ``ssh``, the workspace's known hosts."""
    socket = folder / SOCKET
    loop = asyncio.get_running_loop()
    until = loop.time() + AGENT_WAIT
    while not socket.exists() and loop.time() < until:
        await asyncio.sleep(0.2)
    ssh = [
        "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={folder / KNOWN_HOSTS}", "-o", "IdentitiesOnly=no",
    ]  # fmt: skip
    env = {"GIT_SSH_COMMAND": shlex.join(ssh)}
    if socket.exists():
        say("cloning with the SSH agent kled ws up forwards")
        env["SSH_AUTH_SOCK"] = str(socket)
    else:
        say(f"no SSH agent forwarded by the client within {AGENT_WAIT:.0f}s: cloning without")
    return env


def clone_done(folder: Path) -> None:
    """The clone is over: the forwarded agent is no longer reachable here."""
    (folder / SOCKET).unlink(missing_ok=True)


def clone_error(output: str) -> str:
    """The line of a failed clone's output that says why: ssh's refusal (``Permission
    denied (publickey)``, a changed host key), else git's first ``fatal:``, else the last."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for line in lines:
        if "Permission denied" in line or "Host key verification failed" in line:
            return line
    fatal = [line for line in lines if line.startswith("fatal:")]
    if fatal:
        return fatal[0]
    return lines[-1] if lines else ""
