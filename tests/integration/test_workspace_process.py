"""The ``process`` provider for real: ``kled ws up --provider process`` against a ``kled
server`` and a root ``kled agent``, no container involved.

A folder with a devcontainer.json (an ``image`` the provider ignores with a warning, a
named volume, containerEnv and remoteEnv, every lifecycle hook in a different form) goes up
as a sandboxed process tree: the hooks run in the spec's order as the workspace's own user,
with the environment; sessions (``kled ws exec``/``ssh``) land in workspaceFolder with
remoteEnv, stdin and exit codes; the node's other files (its root's home, the agent's data,
``/etc/shadow``) are not there; the hostname is the workspace's. Files in the source, the
home and the volume survive stop/start, which runs postStartCommand again and nothing else;
an agent restart adopts the running tree, and starts it again when it ended meanwhile (as
after a reboot); delete removes the sandbox, its volume and its
processes. A config with features is refused in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import Hosts, eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("workspaces"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the process provider needs a root agent"),
]

TEAM = f"wsp-{random.randint(10**5, 10**6)}"
NODE = "procnode"
UP_TIMEOUT = 300  # guards a hang only


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    root = tmp_path_factory.mktemp("wsprocess")
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_server()
        h.cli.ok("team", "create", TEAM)
        h.start_agent(NODE)
        eventually(lambda: h.node_phase(NODE) == "Ready", f"node {NODE} Ready")
        yield h
    finally:
        h.close([])
        _kill_sandboxes(root / NODE)


def _kill_sandboxes(data: Path) -> None:
    """Whatever a failed test left running: every sandbox's pid 1 (its tree goes with it)."""
    for pidfile in (data / "wsprocess" / "sandboxes").glob("*/init.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text().split()[0]), 9)


def sandbox(hosts: Hosts, name: str) -> Path:
    return hosts.root / NODE / "wsprocess" / "sandboxes" / f"kled-ws-{TEAM}-{name}"


def write_folder(folder: Path, config: dict[str, object]) -> Path:
    (folder / ".devcontainer").mkdir(parents=True)
    (folder / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
    (folder / "hello.txt").write_text("hello from the laptop\n")
    (folder / ".gitignore").write_text("secret.txt\n")
    (folder / "secret.txt").write_text("never uploaded\n")
    return folder


def shop_config() -> dict[str, object]:
    return {
        "image": "docker.io/library/debian:12",
        "containerEnv": {"FROM_CONTAINER": "c1"},
        "remoteEnv": {"FROM_REMOTE": "r1"},
        "mounts": ["source=cache,target=/cache,type=volume"],
        "onCreateCommand": (
            "echo onCreate >> /cache/order; echo $FROM_REMOTE-$FROM_CONTAINER > /cache/env"
        ),
        "updateContentCommand": "echo updateContent >> /cache/order",
        "postCreateCommand": ["sh", "-c", "echo postCreate >> /cache/order; id -un > ~/who"],
        "postStartCommand": "echo postStart >> /cache/order",
        "postAttachCommand": {"attach": "echo postAttach >> /cache/order"},
    }


def inside(hosts: Hosts, name: str, script: str) -> str:
    return hosts.cli.ok("ws", "exec", name, "--", "sh", "-c", script)


def phase(hosts: Hosts, name: str) -> str:
    doc = hosts.api(f"/api/v1/teams/{TEAM}/workspaces/{name}")
    return str((doc.get("status") or {}).get("phase"))


def test_a_process_workspace_runs_hooks_sessions_and_keeps_files_across_stop_start(
    hosts: Hosts, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "shop", shop_config())
    up = hosts.cli("ws", "up", str(folder), "--provider", "process", timeout=UP_TIMEOUT)
    assert up.code == 0, up
    assert "shop: Running" in up.err
    assert "image docker.io/library/debian:12 is not used by the process provider" in up.err
    assert phase(hosts, "shop") == "Running"

    order = inside(hosts, "shop", "cat /cache/order").split()
    assert order == ["onCreate", "updateContent", "postCreate", "postStart", "postAttach"]
    assert inside(hosts, "shop", "cat /cache/env").strip() == "r1-c1"
    assert inside(hosts, "shop", "cat ~/who").strip() == "dev"  # the hooks' user
    # a session: workspaceFolder, remoteEnv, the workspace's user (not root), its hostname
    seen = inside(hosts, "shop", "pwd; echo $FROM_REMOTE-$FROM_CONTAINER; id -u; hostname")
    cwd, env, uid, hostname = seen.split()
    assert (cwd, env, hostname) == ("/workspaces/shop", "r1-c1", "shop")
    assert int(uid) != 0
    assert inside(hosts, "shop", "cat hello.txt") == "hello from the laptop\n"
    assert hosts.cli("ws", "exec", "shop", "--", "cat", "secret.txt").code != 0  # .gitignore'd
    assert hosts.cli("ws", "exec", "shop", "--", "sh", "-c", "exit 7").code == 7
    assert hosts.cli("ws", "exec", "shop", "--", "cat", stdin="typed\n").out == "typed\n"
    shell = hosts.cli("ws", "ssh", "shop", stdin="echo in-$FROM_CONTAINER\nexit 3\n")
    assert shell.code == 3 and "in-c1" in shell.out
    if shutil.which("ssh") is not None:  # OpenSSH with a PTY, through `kled ws ssh-config`
        config = tmp_path / "ssh_config"
        config.write_text(hosts.cli.ok("ws", "ssh-config", "shop"))
        typed = "test -t 0 && echo tty-yes; echo as-$(id -un); exit 4\n"
        pty = subprocess.run(
            ["ssh", "-F", str(config), "-tt", "ws-shop"],
            input=typed, capture_output=True, text=True, env=hosts.cli.env, timeout=120,
        )  # fmt: skip
        assert pty.returncode == 4, pty.stderr
        assert "tty-yes" in pty.stdout and "as-dev" in pty.stdout
        # scp (sftp) in and out of workspaceFolder, as the workspace's user
        (tmp_path / "up.txt").write_text("sent by scp\n")
        for args in (["up.txt", "ws-shop:up.txt"], ["ws-shop:hello.txt", "down.txt"]):
            copied = subprocess.run(
                ["scp", "-F", str(config), *args], cwd=tmp_path,
                capture_output=True, text=True, env=hosts.cli.env, timeout=120,
            )  # fmt: skip
            assert copied.returncode == 0, copied.stderr
        assert (tmp_path / "down.txt").read_text() == "hello from the laptop\n"
        assert inside(hosts, "shop", "cat up.txt; stat -c %U up.txt") == "sent by scp\ndev\n"

    # The sandbox: the node's secrets and the agent's files are not in it; its own pid 1.
    hidden = f"test -e {hosts.root} || test -e /etc/shadow || ls /root 2>/dev/null; echo $?"
    assert inside(hosts, "shop", hidden).strip() != "0"
    # what the sandbox is made from holds the workspace's token: root's alone on the node
    [state] = (hosts.root).glob("*/wsprocess/sandboxes/*shop*/state.json")
    assert state.stat().st_mode & 0o777 == 0o600
    assert "wssandbox" in inside(hosts, "shop", "tr '\\0' ' ' < /proc/1/cmdline")

    # files written now: in the source, the home and the volume
    inside(hosts, "shop", "echo kept > made.txt; echo kept > ~/home.txt; echo kept > /cache/v")
    hosts.cli.ok("ws", "stop", "shop")
    assert phase(hosts, "shop") == "Stopped"
    refused = hosts.cli("ws", "exec", "shop", "--", "true")
    assert refused.code == 1 and "is Stopped, not Running" in refused.err
    assert not (sandbox(hosts, "shop") / "init.pid").exists()

    hosts.cli.ok("ws", "start", "shop")
    assert inside(hosts, "shop", "cat made.txt ~/home.txt /cache/v").split() == ["kept"] * 3
    order = inside(hosts, "shop", "cat /cache/order").split()
    assert order == [
        "onCreate", "updateContent", "postCreate", "postStart", "postAttach", "postStart",
    ]  # fmt: skip

    # An agent restart adopts the running tree: the same pid 1, no hook again.
    before = (sandbox(hosts, "shop") / "init.pid").read_text()
    hosts.kill_agent(NODE)
    hosts.start_agent(NODE, join=False)
    eventually(lambda: hosts.node_phase(NODE) == "Ready", f"node {NODE} Ready again")
    seen = eventually(
        lambda: hosts.cli("ws", "exec", "shop", "--", "cat", "/cache/order").out,
        "ws exec after the agent restarted",
    )
    assert len(seen.split()) == 6
    assert (sandbox(hosts, "shop") / "init.pid").read_text() == before

    # As after a reboot: the tree ended while no agent ran; the agent starts it again.
    hosts.kill_agent(NODE)
    os.kill(int(before.split()[0]), signal.SIGKILL)
    hosts.start_agent(NODE, join=False)

    def order_after_start() -> list[str]:
        out = hosts.cli("ws", "exec", "shop", "--", "cat", "/cache/order").out.split()
        return out if len(out) == 7 else []

    assert eventually(order_after_start, "postStart after the tree was started again")[-1] == (
        "postStart"
    )
    assert inside(hosts, "shop", "cat made.txt ~/home.txt").split() == ["kept"] * 2
    pid = int((sandbox(hosts, "shop") / "init.pid").read_text().split()[0])

    hosts.cli.ok("ws", "delete", "shop", "--yes")
    volumes = hosts.root / NODE / "wsprocess" / "volumes"

    def gone() -> bool:
        return (
            not sandbox(hosts, "shop").exists()
            and not any(volumes.glob(f"kled-ws-{TEAM}-shop-*"))
            and not Path(f"/proc/{pid}").exists()
            and "shop" not in hosts.cli.ok("ws", "list")
        )

    eventually(gone, "the sandbox, its volume and its processes removed")


def test_features_are_refused_in_one_line(hosts: Hosts, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "feat", {"image": "x", "features": {"./marker": {}}})
    marker = folder / ".devcontainer" / "marker"
    marker.mkdir()
    (marker / "devcontainer-feature.json").write_text(json.dumps({"id": "marker"}))
    (marker / "install.sh").write_text("#!/bin/sh\ntrue\n")
    result = hosts.cli("ws", "up", str(folder), "--provider", "process", timeout=UP_TIMEOUT)
    assert result.code == 1, result
    assert "features (marker) need an image to install into: use --provider container" in (
        result.err
    )
    assert phase(hosts, "feat") == "Failed"
    hosts.cli.ok("ws", "delete", "feat", "--yes")
    eventually(lambda: "feat" not in hosts.cli.ok("ws", "list"), "feat gone")


def test_a_provider_change_removes_the_old_sandbox(hosts: Hosts, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "switch", {"image": "localhost/kled-no-such-image:x"})
    up = hosts.cli("ws", "up", str(folder), "--provider", "process", timeout=UP_TIMEOUT)
    assert up.code == 0, up
    assert (sandbox(hosts, "switch") / "init.pid").exists()
    # as a container now: its image is nowhere, so it fails, but the sandbox went first
    moved = hosts.cli("ws", "up", str(folder), "--provider", "container", timeout=UP_TIMEOUT)
    assert moved.code == 1, moved
    assert "its provider changed from process: removing that one" in moved.err
    assert "localhost/kled-no-such-image:x" in moved.err
    assert not sandbox(hosts, "switch").exists()
    hosts.cli.ok("ws", "delete", "switch", "--yes")
    eventually(lambda: "switch" not in hosts.cli.ok("ws", "list"), "switch gone")
