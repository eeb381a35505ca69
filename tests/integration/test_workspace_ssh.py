"""SSH into a workspace with OpenSSH's own client, relayed through the API.

A real ``kled server``, a real ``kled agent`` on podman, a busybox workspace (nothing of
Kled's or of SSH's in the image). ``kled ws ssh-config`` gives the Host block; OpenSSH's
``ssh -F`` with it runs a command (as remoteUser, in workspaceFolder, with remoteEnv) and
returns its exit code; ``-tt`` gets a PTY; ``kled ws ssh`` does the same without any
config; a key the API did not hand over is refused.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import Hosts, eventually

from imagekit import busybox_image, podman

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("workspaces"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs OpenSSH's ssh (openssh-client)"),
]

TEAM = f"wssh-{random.randint(10**5, 10**6)}"
IMAGE = f"localhost/kled-test-wssh:{TEAM}"
APPLETS = ("sh", "sleep", "echo", "cat", "pwd", "tty", "id", "env")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    root = tmp_path_factory.mktemp("wssh")
    busybox_image(root / "image", IMAGE, APPLETS, dirs=("tmp", "root", "workspaces"))
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_server()
        h.cli.ok("team", "create", TEAM)
        h.start_agent("sshnode")
        eventually(lambda: h.node_phase("sshnode") == "Ready", "node sshnode Ready")
        folder = root / "shop"
        (folder / ".devcontainer").mkdir(parents=True)
        config = {"image": IMAGE, "remoteEnv": {"GREETING": "hi"}}
        (folder / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
        (folder / "hello.txt").write_text("hello over ssh\n")
        up = h.cli("ws", "up", str(folder), timeout=600)
        assert up.code == 0, up
        yield h
    finally:
        h.close([])
        podman("rm", "-f", "-t", "0", f"kled-ws-{TEAM}-shop")
        podman("rmi", "-f", IMAGE)


def ssh(
    hosts: Hosts, config: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(config), *args],
        input=stdin, capture_output=True, text=True, env=hosts.cli.env, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def config(hosts: Hosts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    block = hosts.cli.ok("ws", "ssh-config", "shop")
    assert block.startswith("Host ws-shop\n") and "ProxyCommand " in block
    path = tmp_path_factory.mktemp("sshcfg") / "config"
    path.write_text(block)
    return path


def test_openssh_runs_a_command_in_the_workspace_and_returns_its_exit_code(
    hosts: Hosts, config: Path
) -> None:
    done = ssh(hosts, config, "ws-shop", "--", "cat", "hello.txt")
    assert (done.returncode, done.stdout) == (0, "hello over ssh\n"), done.stderr
    seen = ssh(hosts, config, "ws-shop", "--", "sh", "-c", "'echo $GREETING; pwd; exit 5'")
    assert seen.returncode == 5, seen.stderr
    assert seen.stdout == "hi\n/workspaces/shop\n"
    # stdin passes through; the host key is remembered, so a second connection checks it
    typed = ssh(hosts, config, "ws-shop", "--", "cat", stdin="typed\n")
    assert typed.stdout == "typed\n"


def test_a_pty_session_and_kled_ws_ssh(hosts: Hosts, config: Path) -> None:
    shell = ssh(hosts, config, "-tt", "ws-shop", stdin="tty; echo done-$GREETING; exit 4\n")
    assert shell.returncode == 4, shell.stderr
    assert "/dev/pts/" in shell.stdout and "done-hi" in shell.stdout
    direct = hosts.cli("ws", "ssh", "shop", "--", "sh", "-c", "echo $GREETING; exit 6")
    assert (direct.code, direct.out) == (6, "hi\n"), direct


def test_only_the_key_the_api_handed_over_is_accepted(
    hosts: Hosts, config: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    lines = [
        f"  IdentityFile {other}" if line.strip().startswith("IdentityFile ") else line
        for line in config.read_text().splitlines()
    ]
    wrong = tmp_path / "config"
    wrong.write_text("\n".join(lines) + "\n")
    done = ssh(hosts, wrong, "ws-shop", "--", "true")
    assert done.returncode == 255
    assert "Permission denied" in done.stderr
