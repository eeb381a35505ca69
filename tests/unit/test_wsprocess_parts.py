"""The process provider's pure parts: placement, what of devcontainer.json applies, the
user, and the options a session is entered with (those ``podman exec`` takes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kled.agent.wsengine import EngineError
from kled.agent.wsprocess import check_config, user_name
from kled.agent.wssandbox import SandboxError, parse_exec, session_env
from kled.control.scheduling import NodeInfo
from kled.control.workspaces import plan_placements
from kled.workspace.devcontainer import load_config
from kled.workspace.features import resolve_features

ROOT_ONLY = frozenset({"netns"})  # an agent running as root, no container engine


def doc(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"team": "acme", "name": name}, "spec": spec, "status": {}}


def test_a_process_workspace_goes_to_a_root_agent_without_an_engine() -> None:
    nodes = [NodeInfo("bare", capabilities=ROOT_ONLY)]
    placed, pending = plan_placements([doc("p", provider="process"), doc("c")], nodes)
    assert placed == {("acme", "p"): "bare"}
    # the container one waits, and says what would run it here
    assert "podman or docker" in pending[("acme", "c")]
    assert "kled ws up --provider process" in pending[("acme", "c")]


def test_without_a_root_agent_process_waits_and_container_suggests_nothing() -> None:
    nodes = [NodeInfo("rootless", capabilities=frozenset({"wireguard"}))]
    placed, pending = plan_placements([doc("p", provider="process"), doc("c")], nodes)
    assert placed == {}
    assert "an agent running as root" in pending[("acme", "p")]
    assert "--provider process" not in pending[("acme", "c")]


def config(tmp_path: Path, text: str) -> tuple[Any, list[Any]]:
    (tmp_path / ".devcontainer").mkdir(exist_ok=True)
    path = tmp_path / ".devcontainer" / "devcontainer.json"
    path.write_text(text)
    resolved = load_config(tmp_path, path, env={}, source="x")
    return resolved, resolve_features(resolved)


def test_image_and_build_are_warned_features_refused(tmp_path: Path) -> None:
    said: list[str] = []
    resolved, features = config(tmp_path, '{"image": "debian:12", "remoteUser": "root"}')
    check_config(resolved, features, said.append)
    assert said == [
        "warning: image debian:12 is not used by the process provider (the node's are)",
        "warning: a process workspace never runs as root; its user is dev",
    ]
    feature = tmp_path / ".devcontainer" / "f"
    feature.mkdir()
    (feature / "devcontainer-feature.json").write_text('{"id": "f"}')
    (feature / "install.sh").write_text("true\n")
    resolved, features = config(tmp_path, '{"image": "x", "features": {"./f": {}}}')
    with pytest.raises(EngineError, match=r"features \(f\) need an image"):
        check_config(resolved, features, said.append)


def test_the_user_is_never_root() -> None:
    assert user_name("vscode") == "vscode"
    assert [user_name(u) for u in ("root", "1000", "", None, "Bad Name")] == ["dev"] * 5


def test_exec_takes_podman_exec_options() -> None:
    options, name, argv = parse_exec(
        ["-i", "-t", "--user", "dev", "--workdir=/w", "--env", "TERM=xterm", "-e", "A=1",
         "kled-ws-t-n", "sh", "-c", "echo -e hi"]
    )  # fmt: skip
    assert name == "kled-ws-t-n" and argv == ["sh", "-c", "echo -e hi"]
    assert options["workdir"] == "/w" and options["env"] == {"TERM": "xterm", "A": "1"}
    with pytest.raises(SandboxError, match="unknown option --privileged"):
        parse_exec(["--privileged", "n", "sh"])
    with pytest.raises(SandboxError, match="--workdir needs a value"):
        parse_exec(["--workdir"])


def test_a_session_env_layers_defaults_container_env_then_the_session(tmp_path: Path) -> None:
    env_file = tmp_path / "session.env"
    env_file.write_text("R=remote\nC=overridden\n")
    state = {"home": "/home/dev", "user": "dev", "hostname": "shop",
             "env": {"C": "container", "PATH": "/opt/bin:/usr/bin"}}  # fmt: skip
    options, _, _ = parse_exec(["--env-file", str(env_file), "-e", "X=1", "n", "true"])
    env = session_env(state, options)
    assert env["HOME"] == "/home/dev" and env["USER"] == "dev"
    assert (env["C"], env["R"], env["X"], env["PATH"]) == (
        "overridden", "remote", "1", "/opt/bin:/usr/bin",
    )  # fmt: skip
