"""Where a workspace runs, what the agent is sent, how its reports read: the pure parts."""

from __future__ import annotations

import asyncio
from typing import Any

from kled.control.scheduling import NodeInfo
from kled.control.workspaces import WorkspaceSink, on_host, phase_of, plan_placements
from kled.resources.hoststate import HostDesiredState, ReplicaState, ReplicaStatus
from kled.resources.workspacestate import (
    WorkspaceOnHost,
    WorkspacePhase,
    parse_workspace_id,
    workspace_id,
)

PODMAN = frozenset({"podman"})


def doc(name: str, placed: str | None = None, **spec: Any) -> dict[str, Any]:
    status = {"node": placed} if placed else {}
    return {"metadata": {"team": "acme", "name": name, "uid": "u-" + name}, "spec": spec,
            "status": status}  # fmt: skip


def test_a_new_workspace_goes_to_the_fitting_node_with_fewest() -> None:
    nodes = [NodeInfo("a", capabilities=PODMAN), NodeInfo("b", capabilities=PODMAN)]
    placed, pending = plan_placements([doc("one", placed="a"), doc("two")], nodes)
    assert placed == {("acme", "one"): "a", ("acme", "two"): "b"}
    assert pending == {}


def test_a_placed_workspace_stays_even_when_its_node_is_not_ready() -> None:
    nodes = [NodeInfo("a", ready=False, capabilities=PODMAN), NodeInfo("b", capabilities=PODMAN)]
    placed, _ = plan_placements([doc("one", placed="a")], nodes)
    assert placed == {("acme", "one"): "a"}  # its files and volumes are there


def test_node_selector_and_provider_decide_and_pending_says_why() -> None:
    nodes = [
        NodeInfo("plain", capabilities=frozenset({"netns"})),
        NodeInfo("gpu", labels={"gpu": "yes"}, capabilities=PODMAN),
    ]
    placed, pending = plan_placements(
        [doc("a", nodeSelector={"gpu": "yes"}), doc("b", node="plain"), doc("c", node="nope")],
        nodes,
    )
    assert placed == {("acme", "a"): "gpu"}
    assert "podman or docker" in pending[("acme", "b")]
    assert pending[("acme", "c")] == "node nope does not exist"
    _, none = plan_placements([doc("d")], [])
    assert "no node has joined" in none[("acme", "d")]
    _, kube = plan_placements([doc("e", provider="kubernetes")], nodes)
    assert (
        "kubernetes provider is designed (docs/workspaces.md) but not available yet"
        in kube[("acme", "e")]
    )


def test_the_agent_gets_the_source_and_the_folder_basename() -> None:
    sha = "a" * 64
    ws = on_host(doc("shop", source={"path": "/home/ada/shop/", "upload": sha}, running=False))
    assert (ws.upload, ws.folder, ws.git, ws.running) == (sha, "shop", None, False)
    assert ws.id == "acme._ws.shop.0" == workspace_id("acme", "shop")
    assert parse_workspace_id(ws.id) == ("acme", "shop")
    assert parse_workspace_id("acme.dev.api.0") is None


def test_reports_read_as_phases() -> None:
    def phase(state: ReplicaState, reason: str | None = None) -> WorkspacePhase:
        return phase_of(ReplicaStatus(id="acme._ws.x.0", state=state, reason=reason))

    assert phase(ReplicaState.STARTING, "Building") is WorkspacePhase.BUILDING
    assert phase(ReplicaState.STARTING, "Starting") is WorkspacePhase.STARTING
    assert phase(ReplicaState.RUNNING) is WorkspacePhase.RUNNING
    assert phase(ReplicaState.STOPPED) is WorkspacePhase.STOPPED
    assert phase(ReplicaState.FAILED) is WorkspacePhase.FAILED


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, HostDesiredState]] = []

    def put(self, node: str, state: HostDesiredState) -> None:
        self.sent.append((node, state))


def test_the_sink_joins_replicas_and_workspaces_without_losing_either() -> None:
    async def go() -> Recorder:
        inner = Recorder()
        sink = WorkspaceSink(inner)
        await sink.put("a", HostDesiredState(node="a", generation=1))
        ws = WorkspaceOnHost(team="acme", name="shop")
        await sink.set_workspaces({"a": [ws]})
        await sink.set_workspaces({"a": [ws]})  # unchanged: nothing sent
        await sink.put("a", HostDesiredState(node="a", generation=2))
        return inner

    inner = asyncio.run(go())
    # before the controller read the store: "leave workspaces alone", left out of the message
    assert inner.sent[0][1].workspaces is None
    assert "workspaces" not in inner.sent[0][1].model_dump_json()
    assert [s.workspaces for _, s in inner.sent[1:]] == [
        [WorkspaceOnHost(team="acme", name="shop")]
    ] * 2
    assert inner.sent[-1][1].generation == 2


def test_recreate_is_a_new_spec_for_the_agent_and_survives_stop() -> None:
    plain = doc("shop", source={"git": "file:///r"})
    marked = doc("shop", source={"git": "file:///r"})
    marked["metadata"]["annotations"] = {"kled.io/restartedAt": "2026-12-07T03:00:00Z"}
    assert on_host(plain).recreated == 0
    assert on_host(marked).recreated > 0
    stopped = doc("shop", source={"git": "file:///r"}, running=False)
    stopped["metadata"]["annotations"] = marked["metadata"]["annotations"]
    assert on_host(stopped).recreated == on_host(marked).recreated
