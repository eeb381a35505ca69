"""A folder without devcontainer.json comes up in the preload image, as the user ``dev``.

Real ``kled server``, ``kled agent`` and podman (``hostkit.Hosts``). The image is the one
``kled ws image build`` makes on this machine: building it takes minutes (debootstrap),
more than a test may spend, so the test skips, saying so, when ``kled/preload`` is absent.
Inside, the user sees: they are ``dev`` in ``/workspaces/<folder>`` with their files; git,
python3, node, npm and gcc are there; pip installs to ``~/.local`` and npm's prefix is
``~/.npm-global`` (both writable, no sudo); ``kled`` runs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import Hosts, eventually

from imagekit import podman
from kled.cli.wsimage import DEFAULT_TAG

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("workspaces")]

TEAM = f"wsp-{random.randint(10**5, 10**6)}"
UP_TIMEOUT = 600  # guards a hang only


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:

    if podman("image", "exists", DEFAULT_TAG).returncode != 0:
        pytest.skip(f"no {DEFAULT_TAG} image here: `kled ws image build` makes it (minutes)")
    root = tmp_path_factory.mktemp("preload")
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_server()
        h.cli.ok("team", "create", TEAM)
        h.start_agent("prenode")
        eventually(lambda: h.node_phase("prenode") == "Ready", "node prenode Ready")
        yield h
    finally:
        h.close([])
        podman("rm", "-f", "-t", "0", f"kled-ws-{TEAM}-scripts")


def test_a_folder_without_devcontainer_json_runs_in_the_preload_image_as_dev(
    hosts: Hosts, tmp_path: Path
) -> None:
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "hello.py").write_text("print('hello')\n")
    up = hosts.cli("ws", "up", str(folder), timeout=UP_TIMEOUT)
    assert up.code == 0, up
    assert f"no devcontainer.json: the preload image {DEFAULT_TAG}" in up.err
    assert not (folder / ".devcontainer.json").exists(), "the user's folder is untouched"

    script = (
        "id -un; pwd; ls; python3 hello.py; git --version; node -v; npm -v; gcc --version;"
        " pip config list; npm config get prefix; touch ~/.local/bin/mine ~/.npm-global/mine;"
        " kled --help"
    )
    done = hosts.cli("ws", "exec", "scripts", "--no-stdin", "--", "sh", "-c", script, timeout=120)
    assert done.code == 0, done
    lines = done.out.splitlines()
    assert lines[:2] == ["dev", "/workspaces/scripts"]
    assert "hello.py" in lines and "hello" in lines
    assert any(line.startswith("git version") for line in lines)
    assert any(line.startswith("v") and line[1:2].isdigit() for line in lines)  # node
    assert any(line.startswith("gcc") for line in lines)
    assert "global.user='true'" in lines
    assert "/home/dev/.npm-global" in lines
    assert "kled" in done.out and "Usage" in done.out
    hosts.cli.ok("ws", "delete", "scripts", "--yes")
