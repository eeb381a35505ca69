"""The pure parts of workspace SSH: the node's plan, the API's check, the client's options."""

from __future__ import annotations

from pathlib import Path

import pytest

from kled.agent.workspaces import Session, SessionPlanner, SshPlanner
from kled.agent.wsssh import Plan
from kled.api.workspaces import _ssh_command
from kled.cli import wsssh
from kled.errors import InvalidInput
from kled.resources.hoststate import ReplicaSpec, RuntimeKind

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb5n7mQ1Xz0q3rVZlKp0m7mJd7Jb0V8r3O5m3b7kZ0d"


class _Engine:
    engine = "podman"
    global_flags: list[str] = []


def _planner(tmp_path: Path) -> SshPlanner:
    session = Session(container="kled-ws-acme-shop", user="dev", workdir="/workspaces/shop")
    sessions = SessionPlanner(_Engine(), session, tmp_path / "session.env")  # type: ignore[arg-type]
    return SshPlanner(sessions, tmp_path / "ssh_host_ed25519_key")


def _spec() -> ReplicaSpec:
    return ReplicaSpec(
        team="acme", environment="_ws", app="shop", index=0, runtime=RuntimeKind.PROCESS
    )


def test_the_node_runs_its_ssh_server_with_the_key_and_the_sessions_exec(
    tmp_path: Path,
) -> None:
    argv = _planner(tmp_path).exec_plan(_spec(), ["ssh", KEY]).argv
    assert argv[1:3] == ["-m", "kled.agent.wsssh"]
    plan = Plan.parse(argv[3])
    assert plan.keys == (KEY,) and plan.container == "kled-ws-acme-shop"
    assert plan.argv == ["podman", "exec", "--user", "dev", "--workdir", "/workspaces/shop"]


def test_the_keys_of_the_users_allowed_go_with_the_clients(tmp_path: Path) -> None:
    other = "ecdsa-sha2-nistp256 AAAAE2VjZHNh ann@laptop"
    argv = _planner(tmp_path).exec_plan(_spec(), ["ssh", KEY, other]).argv
    assert Plan.parse(argv[3]).keys == (KEY, other)


@pytest.mark.parametrize("command", [["sh"], ["ssh"], ["ssh", KEY, "x"], ["cat", KEY]])
def test_any_other_command_on_the_ssh_stream_runs_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    assert _planner(tmp_path).exec_plan(_spec(), command).argv == ["false"]


def test_the_api_takes_only_ssh_and_a_public_key() -> None:
    assert _ssh_command(["ssh", KEY + " me@laptop"]) == ["ssh", KEY]
    for bad in (["ssh", "hello"], ["sh", KEY], ["ssh"], ["ssh", "-----BEGIN KEY"]):
        with pytest.raises(InvalidInput, match="OpenSSH public key"):
            _ssh_command(bad)


def test_the_cli_makes_its_key_once_and_a_host_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    private, public = wsssh.ensure_key()
    assert public.startswith("ssh-ed25519 ") and private.stat().st_mode & 0o777 == 0o600
    assert wsssh.ensure_key() == (private, public)
    block = wsssh.host_block("acme", "shop")
    assert block.startswith("Host ws-shop\n")
    assert f"  IdentityFile {private}\n" in block
    assert "ws proxy shop --team acme" in block
    assert "  HostKeyAlias kled-ws-acme-shop\n" in block
    with pytest.raises(InvalidInput, match="NAME"):
        wsssh.check_name("-oProxyCommand=x")
