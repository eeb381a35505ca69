"""hostRequirements in placement: a workspace goes only where cpus, memory and gpu are
met; when no node meets them it stays Pending and says why, as apps do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cli.clikit import Cli
from kled.cli import wshost
from kled.control.scheduling import NodeInfo
from kled.control.workspaces import plan_placements
from kled.resources.specs import WorkspaceSpec

PODMAN = frozenset({"podman"})
GIB = 2**30


def doc(name: str, **requirements: Any) -> dict[str, Any]:
    spec = {"hostRequirements": requirements} if requirements else {}
    return {"metadata": {"team": "acme", "name": name}, "spec": spec, "status": {}}


def node(name: str, cpus: int | None, gib: int | None, **kw: Any) -> NodeInfo:
    return NodeInfo(
        name,
        cpu_millicores=None if cpus is None else cpus * 1000,
        memory_bytes=None if gib is None else gib * GIB,
        capabilities=kw.pop("capabilities", PODMAN),
        **kw,
    )


def test_the_workspace_goes_to_the_node_big_enough() -> None:
    nodes = [node("small", 2, 4), node("big", 8, 32)]
    placed, pending = plan_placements([doc("ml", cpus=4, memory="16Gi")], nodes)
    assert (placed, pending) == ({("acme", "ml"): "big"}, {})


def test_no_node_big_enough_stays_pending_with_the_reason() -> None:
    nodes = [node("a", 2, 4), node("b", 4, 4), node("c", 8, 16, ready=False)]
    placed, pending = plan_placements([doc("ml", cpus=4, memory="8Gi")], nodes)
    assert placed == {}
    # c is not Ready: not counted among the nodes too small
    assert pending == {
        ("acme", "ml"): "insufficient memory on 2 nodes (needs 8Gi); "
        "insufficient cpu on 1 node (needs 4)"
    }


def test_a_gpu_is_a_capability_or_a_label_and_optional_wants_none() -> None:
    plain, labelled = node("plain", 8, 8), node("lab", 8, 8, labels={"kled.io/gpu": "true"})
    placed, _ = plan_placements([doc("train", gpu=True)], [plain, labelled])
    assert placed == {("acme", "train"): "lab"}
    cap = node("cap", 8, 8, capabilities=PODMAN | {"gpu"})
    assert plan_placements([doc("t", gpu=True)], [plain, cap])[0] == {("acme", "t"): "cap"}
    _, pending = plan_placements([doc("t", gpu=True)], [plain])
    assert pending == {("acme", "t"): "no GPU on 1 node (hostRequirements.gpu)"}
    assert plan_placements([doc("t", gpu="optional")], [plain])[0] == {("acme", "t"): "plain"}


def test_a_node_that_has_not_said_its_size_is_not_limited() -> None:
    placed, _ = plan_placements([doc("ml", cpus=64, memory="1Ti")], [node("x", None, None)])
    assert placed == {("acme", "ml"): "x"}


def test_other_reasons_come_first_when_no_node_is_eligible() -> None:
    docker_less = node("a", 8, 8, capabilities=frozenset())
    _, pending = plan_placements([doc("ml", memory="64Gi")], [docker_less])
    assert "needs podman or docker" in pending[("acme", "ml")]


@pytest.mark.parametrize(
    ("requirements", "where"),
    [({"cpus": 0}, "cpus"), ({"memory": "lots"}, "memory"), ({"gpu": "yes"}, "gpu")],
)
def test_bad_requirements_name_the_field(requirements: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkspaceSpec.model_validate({"hostRequirements": requirements})
    assert caught.value.errors()[0]["loc"][:2] == ("hostRequirements", where)


def test_kled_ws_up_sends_the_configs_requirements(tmp_path: Path) -> None:
    (tmp_path / ".devcontainer").mkdir()
    config = {"image": "x", "hostRequirements": {"cpus": 4, "memory": "8gb", "gpu": {"cores": 2}}}
    (tmp_path / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
    sent = wshost.requirements(tmp_path, None)
    assert sent == {"hostRequirements": {"cpus": 4, "memory": "8Gi", "gpu": True}}
    WorkspaceSpec.model_validate(sent)  # what the server will take
    (tmp_path / ".devcontainer" / "devcontainer.json").write_text('{"image": "x"}')
    assert wshost.requirements(tmp_path, None) == {}


def test_the_kubernetes_provider_is_designed_not_available(tmp_path: Path) -> None:
    spec = {"provider": "kubernetes"}
    applied = {"metadata": {"team": "acme", "name": "k"}, "spec": spec, "status": {}}
    _, pending = plan_placements([applied], [node("a", 8, 8)])
    assert pending[("acme", "k")].startswith("the kubernetes provider is designed")
    done = Cli(tmp_path)("ws", "up", str(tmp_path), "--provider", "kubernetes", "--team", "t")
    assert done.code == 2
    assert done.err.strip().splitlines() == [
        "error: --provider kubernetes is designed (docs/workspaces.md) but not available yet: "
        "use container or process"
    ]
