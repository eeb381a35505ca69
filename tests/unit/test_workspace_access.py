"""Pure parts of workspace access: remoteUser's ids from the container's files, the SSH
server's plan, ``kled ws forward``'s ports, users' SSH keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from kled.agent.workspaces import spec_hash
from kled.agent.wsenter import EnterError, account
from kled.agent.wsssh import Plan
from kled.cli.wsforward import parse_ports
from kled.control.workspaces import on_host
from kled.errors import InvalidInput
from kled.resources.specs import UserSpec
from kled.resources.sshkeys import fingerprint, parse_key, workspace_keys


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n# a comment\ndev:x:1000:1001:Dev:/home/dev:/bin/sh\n"
    )
    (tmp_path / "etc" / "group").write_text("root:x:0:\ndev:x:1001:\ndocker:x:998:dev,ann\n")
    return tmp_path


def test_remote_user_by_name_uid_or_uid_and_group(root: Path) -> None:
    dev = account(root, "dev")
    assert (dev.uid, dev.gid, dev.groups, dev.home) == (1000, 1001, (998, 1001), "/home/dev")
    assert account(root, "1000") == dev
    assert account(root, None).uid == 0 and account(root, None).home == "/root"
    assert account(root, "dev:docker").gid == 998
    unknown = account(root, "4242")  # a bare uid the image does not name
    assert (unknown.uid, unknown.gid, unknown.home) == (4242, 4242, "/")
    with pytest.raises(EnterError, match="no user ghost"):
        account(root, "ghost")


def test_the_plan_reads_user_and_folder_from_the_exec_prefix() -> None:
    argv = ["podman", "--runtime", "crun", "exec", "--user", "dev", "--workdir", "/w/shop"]
    text = json.dumps({"argv": argv, "container": "c", "host_key": "/k", "keys": ["a", "b"]})
    plan = Plan.parse(text)
    assert plan.engine == ["podman", "--runtime", "crun"]
    assert (plan.user, plan.workdir, plan.keys) == ("dev", "/w/shop", ("a", "b"))
    bare = Plan.parse(json.dumps({"argv": ["podman", "exec"], "container": "c",
                                  "host_key": "/k", "key": "a"}))  # fmt: skip
    assert (bare.user, bare.workdir, bare.keys) == (None, None, ("a",))


@pytest.mark.parametrize(("text", "ports"), [("8080", (8080, 8080)), ("9000:80", (9000, 80))])
def test_forward_ports(text: str, ports: tuple[int, int]) -> None:
    assert parse_ports(text) == ports


@pytest.mark.parametrize("text", ["", "0", "80:", ":80", "70000:80", "a:b", "80:90:100"])
def test_bad_forward_ports_name_the_argument(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_ports(text)
    assert caught.value.field == "LOCAL[:REMOTE]"


def test_key_ids_are_openssh_fingerprints(tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ann@x", "-f", str(key)],
                   check=True)  # fmt: skip
    line = (tmp_path / "k.pub").read_text()
    shown = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True,
                           text=True, check=True).stdout.split()[1]  # fmt: skip
    assert fingerprint(line) == shown
    assert parse_key(line)[0::2] == ("ssh-ed25519", "ann@x")


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("", "must be an OpenSSH public key line"),
        ("ssh-dss AAAAB3NzaC1kc3M= x", "must be an OpenSSH public key line"),
        ("ssh-ed25519 !!!", "base64 does not decode"),
        ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl", "not a"),
    ],
)
def test_bad_keys_say_what_is_wrong(line: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_key(line)
    with pytest.raises(ValidationError) as caught:
        UserSpec.model_validate({"sshKeys": [{"key": line}]})
    assert caught.value.errors()[0]["loc"] == ("sshKeys", 0, "key")


def test_the_keys_a_workspace_accepts_are_its_allowed_users() -> None:
    def user(name: str, role: str, *keys: str) -> dict[str, object]:
        return {"metadata": {"name": name}, "spec": {"role": role,
                "sshKeys": [{"key": k} for k in keys]}}  # fmt: skip

    users = [user("ann", "member", "k-ann"), user("bob", "member", "k-bob"),
             user("cy", "admin", "k-cy", "k-ann"), user("vi", "viewer", "k-vi")]  # fmt: skip
    owned = {"spec": {"owner": "ann"}}
    assert workspace_keys(owned, users) == ["k-ann", "k-cy"]
    assert workspace_keys({"spec": {}}, users) == ["k-ann", "k-bob", "k-cy"]  # the team's
    ws = on_host({"metadata": {"team": "acme", "name": "shop"}, "spec": {}}, ["k-ann"])
    assert ws.authorized_keys == ["k-ann"]
    assert spec_hash(ws) == spec_hash(ws.model_copy(update={"authorized_keys": []}))
