"""Which lifecycle hooks run, where and when: a pure plan, tested as state transitions.

The hooks run in the spec's order::

    initializeCommand (on the client) → onCreateCommand → updateContentCommand
    → postCreateCommand → postStartCommand → postAttachCommand

``initializeCommand`` runs on the client at every ``up``, before anything is built or
started. The create-time hooks (onCreate, updateContent, postCreate) run once per
container, ``postStartCommand`` once per start of it, ``postAttachCommand`` every time a
client attaches. As in the reference CLI (``injectHeadless.ts``), "once" is kept by
markers inside the container: the container's creation time for each create-time hook,
its start time for postStart. A marker is written just before its hook runs, so a hook
that failed is not run again by a later start; ``--recreate`` makes a new container, whose
new creation time runs them all again. A container the agent adopts after a restart keeps
its markers, so nothing runs twice.

``plan`` turns (container state, event) into the steps to run; it does not run them.
Each hook contributes the features' commands first (in install order) and then
devcontainer.json's, as the reference merges them. ``waitFor`` (default
``updateContentCommand``) marks the last step the client waits for; the rest may run
after ``up`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from kled.workspace.devcontainer import DevContainer
from kled.workspace.features import Feature
from kled.workspace.properties import LIFECYCLE_HOOKS, Command

CREATE_HOOKS = ("onCreateCommand", "updateContentCommand", "postCreateCommand")
START_HOOK = "postStartCommand"
ATTACH_HOOK = "postAttachCommand"
DEFAULT_WAIT_FOR = "updateContentCommand"

#: where the marker files live in the container, under the remote user's home
MARKER_FOLDER = ".devcontainer"


def marker_path(hook: str) -> str:
    """The marker file of ``hook``, relative to the remote user's home (the reference's)."""
    return f"{MARKER_FOLDER}/.{hook}Marker"


class Event(StrEnum):
    #: ``kled ws up``: the client is there; it runs initializeCommand and attaches
    UP = "up"
    #: the agent started the container with no client: ``kled ws start``, a node reboot
    START = "start"
    #: a running container, a client attaches again (a resumed session)
    ATTACH = "attach"


@dataclass(frozen=True)
class ContainerState:
    """What the engine and the markers say about the workspace's container."""

    #: False when there is no container yet (``up`` will create one)
    exists: bool = False
    running: bool = False
    created_at: str | None = None
    started_at: str | None = None
    #: hook → the timestamp its marker holds
    markers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HookCommand:
    """One command of a hook, and where it came from (a feature's id, or the config)."""

    origin: str
    command: Command


@dataclass(frozen=True)
class Step:
    hook: str
    where: Literal["client", "container"]
    commands: tuple[HookCommand, ...]
    #: which of the container's timestamps the hook's marker records (just before it runs)
    marker: Literal["created", "started"] | None = None
    #: True for the steps ``up`` waits for (up to ``waitFor``)
    wait: bool = True


def hook_commands(
    config: DevContainer,
    features: Sequence[Feature] = (),
    *,
    config_name: str = "devcontainer.json",
) -> dict[str, tuple[HookCommand, ...]]:
    """Every hook's commands: the features' first, in install order, then the config's."""
    result: dict[str, tuple[HookCommand, ...]] = {}
    for hook in LIFECYCLE_HOOKS:
        found = [
            HookCommand(feature.id, feature.hooks[hook])
            for feature in features
            if hook in feature.hooks
        ]
        own = config.hook(hook)
        if own is not None:
            found.append(HookCommand(config_name, own))
        if found:
            result[hook] = tuple(found)
    return result


def plan(
    hooks: Mapping[str, Sequence[HookCommand]],
    state: ContainerState,
    event: Event,
    *,
    wait_for: str | None = None,
) -> list[Step]:
    """The hooks to run, in order, for ``event`` on a container in ``state``.

    ``state`` is the container as it is before the event: for ``UP`` the runtime runs the
    client step, then creates or starts the container, then the container steps.
    """
    wanted: list[tuple[str, Literal["client", "container"], Literal["created", "started"] | None]]
    wanted = []
    if event is Event.UP:
        wanted.append(("initializeCommand", "client", None))
    if event in (Event.UP, Event.START):
        # A new container is created now; a stopped one is started now: either way its
        # timestamps will differ from every marker.
        fresh = not state.exists
        restarted = fresh or not state.running
        for hook in CREATE_HOOKS:
            if fresh or state.markers.get(hook) != state.created_at:
                wanted.append((hook, "container", "created"))
        if restarted or state.markers.get(START_HOOK) != state.started_at:
            wanted.append((START_HOOK, "container", "started"))
    if event in (Event.UP, Event.ATTACH):
        wanted.append((ATTACH_HOOK, "container", None))

    last = LIFECYCLE_HOOKS.index(wait_for or DEFAULT_WAIT_FOR)
    steps: list[Step] = []
    for hook, where, marker in wanted:
        commands = tuple(hooks.get(hook, ()))
        waits = event is Event.UP and LIFECYCLE_HOOKS.index(hook) <= last
        if commands:
            steps.append(Step(hook, where, commands, marker, waits))
    return steps


def after(
    state: ContainerState, event: Event, *, created_at: str, started_at: str
) -> ContainerState:
    """The container's state once ``event`` was handled: the container runs with these
    timestamps, and every marker of a create or start hook records them, whether or not
    the hook had a command (as in the reference: a command added later does not run on
    an old container; ``--recreate`` runs it)."""
    if event is Event.ATTACH:
        return state
    markers = dict(state.markers)
    for hook in CREATE_HOOKS:
        markers[hook] = created_at
    markers[START_HOOK] = started_at
    return replace(
        state,
        exists=True,
        running=True,
        created_at=created_at,
        started_at=started_at,
        markers=markers,
    )
