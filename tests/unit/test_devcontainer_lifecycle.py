"""Which hooks run when: create-time once, start-time every start, attach every attach."""

from __future__ import annotations

from pathlib import Path

from kled.workspace.devcontainer import DevContainer
from kled.workspace.features import Feature
from kled.workspace.lifecycle import (
    ContainerState,
    Event,
    HookCommand,
    Step,
    after,
    hook_commands,
    marker_path,
    plan,
)
from kled.workspace.properties import ExecCommand, ShellCommand

ALL = DevContainer.model_validate(
    {
        "image": "x",
        "initializeCommand": "echo init",
        "onCreateCommand": "echo create",
        "updateContentCommand": "echo update",
        "postCreateCommand": ["echo", "post-create"],
        "postStartCommand": "echo start",
        "postAttachCommand": {"a": "echo a", "b": "echo b"},
    }
)
HOOKS = hook_commands(ALL)
NONE = ContainerState()


def hooks(steps: list[Step]) -> list[str]:
    return [s.hook for s in steps]


def test_first_up_runs_everything_in_the_spec_order() -> None:
    steps = plan(HOOKS, NONE, Event.UP)
    assert hooks(steps) == [
        "initializeCommand",
        "onCreateCommand",
        "updateContentCommand",
        "postCreateCommand",
        "postStartCommand",
        "postAttachCommand",
    ]
    assert steps[0].where == "client"
    assert all(s.where == "container" for s in steps[1:])
    assert [s.marker for s in steps] == [None, "created", "created", "created", "started", None]
    # waitFor defaults to updateContentCommand: up waits for the first three
    assert [s.wait for s in steps] == [True, True, True, False, False, False]


def test_stop_start_runs_only_start_time_hooks() -> None:
    first = after(NONE, Event.UP, created_at="c1", started_at="s1")
    stopped = ContainerState(True, False, "c1", "s1", first.markers)
    assert hooks(plan(HOOKS, stopped, Event.START)) == ["postStartCommand"]
    # an up of a stopped container: init on the client, start hook, attach
    assert hooks(plan(HOOKS, stopped, Event.UP)) == [
        "initializeCommand",
        "postStartCommand",
        "postAttachCommand",
    ]


def test_resume_of_a_running_container_runs_only_attach() -> None:
    running = after(NONE, Event.UP, created_at="c1", started_at="s1")
    assert hooks(plan(HOOKS, running, Event.ATTACH)) == ["postAttachCommand"]
    # a second up while running: init (every up) and attach; nothing in the container again
    assert hooks(plan(HOOKS, running, Event.UP)) == ["initializeCommand", "postAttachCommand"]


def test_node_reboot_start_runs_post_start_once_per_start_time() -> None:
    running = after(NONE, Event.UP, created_at="c1", started_at="s1")
    # the agent finds it running with a newer start time (restarted by the engine)
    rebooted = ContainerState(True, True, "c1", "s2", running.markers)
    assert hooks(plan(HOOKS, rebooted, Event.START)) == ["postStartCommand"]
    again = after(rebooted, Event.START, created_at="c1", started_at="s2")
    assert plan(HOOKS, again, Event.START) == []  # adopted again: nothing twice


def test_recreate_runs_create_hooks_again() -> None:
    old = after(NONE, Event.UP, created_at="c1", started_at="s1")
    recreated = ContainerState(True, True, "c2", "s2", old.markers)
    assert hooks(plan(HOOKS, recreated, Event.START)) == [
        "onCreateCommand",
        "updateContentCommand",
        "postCreateCommand",
        "postStartCommand",
    ]


def test_markers_record_every_create_and_start_hook_even_without_a_command() -> None:
    bare = hook_commands(DevContainer.model_validate({"image": "x"}))
    assert plan(bare, NONE, Event.UP) == []
    state = after(NONE, Event.UP, created_at="c1", started_at="s1")
    assert state.markers == {
        "onCreateCommand": "c1",
        "updateContentCommand": "c1",
        "postCreateCommand": "c1",
        "postStartCommand": "s1",
    }
    # a postCreateCommand added later does not run on the same container (the reference)
    assert hooks(plan(HOOKS, state, Event.START)) == []
    assert after(state, Event.ATTACH, created_at="x", started_at="y") == state


def test_wait_for_moves_the_point_up_returns() -> None:
    steps = plan(HOOKS, NONE, Event.UP, wait_for="postStartCommand")
    assert [s.hook for s in steps if s.wait][-1] == "postStartCommand"
    assert all(not s.wait for s in plan(HOOKS, NONE, Event.START))


def test_features_hooks_run_before_the_configs_in_install_order() -> None:
    def feat(ident: str, command: str) -> Feature:
        return Feature(
            user_id=f"./{ident}",
            path=Path("/w/.devcontainer") / ident,
            id=ident,
            value=True,
            hooks={"postCreateCommand": ShellCommand(script=command)},
        )

    merged = hook_commands(ALL, [feat("b", "b-setup"), feat("a", "a-setup")])
    assert merged["postCreateCommand"] == (
        HookCommand("b", ShellCommand(script="b-setup")),
        HookCommand("a", ShellCommand(script="a-setup")),
        HookCommand("devcontainer.json", ExecCommand(argv=["echo", "post-create"])),
    )
    (step,) = [s for s in plan(merged, NONE, Event.UP) if s.hook == "postCreateCommand"]
    assert [c.origin for c in step.commands] == ["b", "a", "devcontainer.json"]


def test_marker_paths_are_the_references() -> None:
    assert marker_path("postCreateCommand") == ".devcontainer/.postCreateCommandMarker"
