"""A workspace as a node's agent must run it: the wire contract of the workspace runner.

The control plane places each ``Workspace`` on a node and sends it, resolved, in that
node's ``HostDesiredState.workspaces``; the agent reports back through the same status,
event and log subjects as replicas, under the id ``<team>._ws.<name>.0``. ``_ws`` is not a
DNS label, so no environment can have that name: a workspace's id never meets an app's,
and the workload controller ignores it (no app is placed under it).

Phases, as ``Workspace.status.phase`` shows them: Pending (not placed, or the agent has
not started on it), Building (source, image, features), Starting (the container and its
create-time hooks), Running, Stopped, Failed (with a one-line reason).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

#: the token between team and name in a workspace's replica-style id
WS_TOKEN = "_ws"


class WorkspacePhase(StrEnum):
    PENDING = "Pending"
    BUILDING = "Building"
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPED = "Stopped"
    FAILED = "Failed"


def workspace_id(team: str, name: str) -> str:
    """The id a workspace's statuses, events and log lines carry."""
    return f"{team}.{WS_TOKEN}.{name}.0"


def parse_workspace_id(value: str) -> tuple[str, str] | None:
    """``<team>._ws.<name>.0`` → (team, name); None when it is not a workspace's id."""
    parts = value.split(".")
    if len(parts) != 4 or parts[1] != WS_TOKEN or parts[3] != "0":
        return None
    return parts[0], parts[2]


#: the reason an agent stops an idle workspace with (``idle for 30m``): the control plane
#: then turns its ``spec.running`` off
IDLE_PREFIX = "idle for "


class WorkspaceOnHost(BaseModel):
    """One workspace a node should have: running, or stopped with its container kept."""

    model_config = ConfigDict(extra="forbid")

    team: str
    name: str
    uid: str = ""
    provider: str = "container"
    running: bool = True
    #: a git URL cloned on the node, with its ref; or an uploaded archive's sha256
    git: str | None = None
    ref: str | None = None
    upload: str | None = None
    #: the folder's basename on the user's machine: the source is mounted under it
    folder: str | None = None
    #: the config's path inside the source; None: discovery in the spec's order
    devcontainer: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    #: bumped by ``kled ws up --recreate`` (and by ``up`` of a Failed workspace): a new
    #: container, volumes kept
    recreated: int = 0
    #: bumped by ``kled ws up --reset``: a new container, and the workspace's files (its
    #: source as fetched or cloned) and volumes dropped first
    reset: int = 0
    #: the client's values of the variables the config names as ``${localEnv:V}``
    local_env: dict[str, str] = Field(default_factory=dict)
    #: ``kled ws up --project DIR``: no devcontainer.json, the image of DIR's Dockerfile
    project: str | None = None
    #: ``spec.idleTimeout`` in seconds: stopped after so long unused (``agent/wsidle.py``)
    idle_timeout: int | None = None
    #: the SSH keys of the users allowed on it (owner, team admins): its direct SSH port
    #: accepts them (``agent/wslisten.py``)
    authorized_keys: list[str] = Field(default_factory=list)

    @property
    def id(self) -> str:
        return workspace_id(self.team, self.name)

    @property
    def resource_name(self) -> str:
        return f"workspace/{self.team}/{self.name}"
