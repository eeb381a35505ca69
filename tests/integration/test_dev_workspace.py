"""``kled dev ws/NAME``: sync into a running workspace and run the dev command there.

A busybox workspace (``kled ws up``) whose image also holds this machine's ``python3``
(and nothing of Kled's), on a real ``kled server`` and ``kled agent``; ``kled dev ws/box``
syncs a laptop folder into it over the workspace's exec
route and runs a command that prints the synced file whenever it changes. Nothing is
swapped, so Ctrl-C leaves the workspace as it is.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hostkit import Hosts, eventually

from imagekit import busybox_image, podman

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("devws")]

TEAM = f"devws-{random.randint(10**5, 10**6)}"
IMAGE = f"localhost/kled-devws:{TEAM}"
APPLETS = ("sh", "sleep", "echo", "cat", "mkdir", "rm", "env", "ls", "kill", "tr")
# prints notes.txt each time it is started: a restart shows the new text
SHOW = "import pathlib; print('notes:', pathlib.Path('notes.txt').read_text().strip(), flush=True)"


def _python_into(rootfs: Path) -> None:
    """This machine's python3 (binary, standard library, the shared libraries they load)
    into an image's root: a workspace image with python3 and nothing of Kled's."""
    python = Path(os.path.realpath("/usr/bin/python3"))
    stdlib = Path("/usr/lib") / python.name  # Debian's: /usr/bin/python3.11's own
    if not python.is_file() or not stdlib.is_dir() or shutil.which("ldd") is None:
        pytest.skip("needs the system's python3 and ldd to build the workspace image")
    (rootfs / "usr" / "bin").mkdir(parents=True)
    shutil.copy2(python, rootfs / "usr" / "bin" / "python3")
    skip = shutil.ignore_patterns("__pycache__", "test", "idlelib", "tkinter", "ensurepip")
    shutil.copytree(stdlib, rootfs / stdlib.relative_to("/"), ignore=skip, symlinks=True)
    objects = [python, *(stdlib / "lib-dynload").glob("*.so")]
    libraries: set[str] = set()
    for obj in objects:
        found = subprocess.run(["ldd", str(obj)], capture_output=True, text=True, check=False)
        libraries.update(re.findall(r"(/\S+\.so[.\d]*)", found.stdout))
    for library in libraries:
        real = Path(library).resolve()
        target = rootfs / Path(library.replace("/lib/", "/usr/lib/", 1)).relative_to("/")
        if library.startswith("/lib64/"):
            target = rootfs / "usr" / Path(library).relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copy2(real, target)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:

    root = tmp_path_factory.mktemp("devws")
    _python_into(root / "image" / "rootfs")
    links = (("lib", "usr/lib"), ("lib64", "usr/lib64"))
    busybox_image(root / "image", IMAGE, APPLETS, dirs=("tmp", "workspaces"), links=links)
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_server()
        h.cli.ok("team", "create", TEAM)
        h.start_agent("wsdev")
        eventually(lambda: h.node_phase("wsdev") == "Ready", "node wsdev Ready")
        yield h
    finally:
        h.cli("ws", "delete", "box")
        h.close([])
        podman("rm", "-f", "-t", "0", f"kled-ws-{TEAM}-box")
        podman("rmi", "-f", IMAGE)


def test_dev_syncs_into_a_workspace_and_restarts_its_command(hosts: Hosts, tmp_path: Path) -> None:
    project = tmp_path / "box"
    (project / ".devcontainer").mkdir(parents=True)
    config = {"image": IMAGE}
    (project / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
    up = hosts.cli("ws", "up", str(project), timeout=600)
    assert up.code == 0, up
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    (laptop / "notes.txt").write_text("first\n")
    rule = {"local": ".", "remote": "/tmp/dev"}
    dev = {"sync": [rule], "command": ["python3", "-c", SHOW], "onChange": {"restart": ["*.txt"]}}
    (laptop / "kled.yaml").write_text(yaml.safe_dump({"dev": {"ws/box": dev}}))
    lines: list[str] = []
    proc = hosts.cli.popen("dev", "-f", str(laptop / "kled.yaml"))
    threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True).start()

    def said(text: str) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"kled dev exited: {lines} {proc.stderr and proc.stderr.read()}")
        return any(text in line for line in lines)

    try:
        try:
            eventually(lambda: said("[ws/box] notes: first"), "the command ran in the workspace")
            (laptop / "notes.txt").write_text("second\n")
            eventually(lambda: said("[ws/box] notes: second"), "a change restarted it")
        except AssertionError as err:
            raise AssertionError(f"{err}; kled dev said: {lines}") from None
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, lines
    assert any("left workspace box as it is" in line for line in lines), lines
    inside = podman("exec", f"kled-ws-{TEAM}-box", "cat", "/tmp/dev/notes.txt")
    assert inside.stdout == "second\n", inside
    assert "Running" in hosts.cli.ok("ws", "list")
