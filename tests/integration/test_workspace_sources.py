"""Sources without devcontainer.json, and starting over: ``kled ws configs``, ``--project``,
a git repository with no config, ``--reset`` beside ``--recreate``.

Real ``kled server``, ``kled agent`` and podman; the image is busybox, made here. A
repository with Dockerfiles in subfolders lists them with ``kled ws configs`` (from a
folder and from a ``file://`` git URL) and goes up from one with ``--project`` (its
Dockerfile built, the session in its folder). A git repository without any config runs in
the preload image, and where that image was not built the workspace fails with one line
saying how to build it. A file written inside the workspace and a volume's content survive
``--recreate`` and are gone after ``--reset``, which also clones a git source again.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import Hosts, eventually

from imagekit import busybox_image, podman
from kled.workspace.projects import PRELOAD_IMAGE

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("workspaces")]

TEAM = f"wss-{random.randint(10**5, 10**6)}"
IMAGE = f"localhost/kled-test-wss:{TEAM}"
APPLETS = ("sh", "sleep", "echo", "cat", "mkdir", "printf", "rm", "ls", "touch", "pwd", "true")
UP_TIMEOUT = 600  # guards a hang only


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:

    root = tmp_path_factory.mktemp("wssources")
    busybox_image(root / "image", IMAGE, APPLETS, dirs=("tmp", "root", "workspaces"))
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_server()
        h.cli.ok("team", "create", TEAM)
        h.start_agent("srcnode")
        eventually(lambda: h.node_phase("srcnode") == "Ready", "node srcnode Ready")
        yield h
    finally:
        h.close([])
        _cleanup()


def _cleanup() -> None:
    names = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
    for name in names:
        if name.startswith(f"kled-ws-{TEAM}-"):
            podman("rm", "-f", "-t", "0", name)
    for name in podman("volume", "ls", "-q").stdout.split():
        if name.startswith(f"kled-ws-{TEAM}-"):
            podman("volume", "rm", "-f", name)
    for tag in podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split():
        if f"kled-ws/{TEAM}-" in tag:
            podman("rmi", "-f", tag)
    podman("rmi", "-f", IMAGE)


def container(name: str) -> str:
    return f"kled-ws-{TEAM}-{name}"


def git(repo: Path, *args: str) -> None:
    base = ["git", "-C", str(repo), "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run([*base, *args], check=True, capture_output=True)


def commit_all(repo: Path, message: str) -> None:
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def monorepo(root: Path) -> Path:
    """Two services with a Dockerfile each, and one in node_modules (not a project)."""
    api = root / "services" / "api"
    api.mkdir(parents=True)
    (api / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN echo api-image > /built-from\n")
    (api / "main.txt").write_text("the api\n")
    web = root / "services" / "web"
    web.mkdir(parents=True)
    (web / "Containerfile").write_text(f"FROM {IMAGE}\nRUN echo web-image > /built-from\n")
    vendored = root / "node_modules" / "left-pad"
    vendored.mkdir(parents=True)
    (vendored / "Dockerfile").write_text("FROM scratch\n")
    return root


def test_configs_lists_subprojects_and_project_runs_one_from_its_dockerfile(
    hosts: Hosts, tmp_path: Path
) -> None:
    repo = monorepo(tmp_path / "shopmono")
    listed = hosts.cli.ok("ws", "configs", str(repo)).splitlines()
    assert listed[0].split() == ["KIND", "PATH", "UP", "WITH"]
    rows = [line.split(None, 2) for line in listed[1:]]
    assert rows == [
        ["project", "services/api/Dockerfile", f"kled ws up {repo} --project services/api"],
        ["project", "services/web/Containerfile", f"kled ws up {repo} --project services/web"],
    ]

    up = hosts.cli("ws", "up", str(repo), "--project", "services/api", "--name", "mono-api",
                   timeout=UP_TIMEOUT)  # fmt: skip
    assert up.code == 0, up
    seen = hosts.cli.ok("ws", "exec", "mono-api", "--", "sh", "-c", "cat /built-from; pwd; ls")
    assert seen.splitlines() == [
        "api-image", "/workspaces/shopmono/services/api", "Dockerfile", "main.txt",
    ]  # fmt: skip
    assert not (repo / ".devcontainer.json").exists() and not (repo / ".devcontainer").exists()
    hosts.cli.ok("ws", "delete", "mono-api", "--yes")

    # the same from git: listed from a clone here, built from the node's clone
    commit_all(repo, "two services")
    url = f"file://{repo}"
    listed = hosts.cli.ok("ws", "configs", url)
    assert f"kled ws up {url} --project services/web" in listed
    up = hosts.cli("ws", "up", url, "--project", "services/web", "--name", "mono-web",
                   timeout=UP_TIMEOUT)  # fmt: skip
    assert up.code == 0, up
    seen = hosts.cli.ok("ws", "exec", "mono-web", "--", "sh", "-c", "cat /built-from; pwd")
    assert seen.splitlines() == ["web-image", "/workspaces/shopmono/services/web"]
    hosts.cli.ok("ws", "delete", "mono-web", "--yes")


def test_a_monorepo_lists_each_config_and_each_goes_up_as_its_own_workspace(
    hosts: Hosts, tmp_path: Path
) -> None:
    repo = monorepo(tmp_path / "both")
    for name in ("api", "web"):
        folder = repo / ".devcontainer" / name
        folder.mkdir(parents=True)
        config = {
            "image": IMAGE,
            "workspaceFolder": f"/workspaces/both/services/{name}",
            "containerEnv": {"SERVICE": name},
        }
        (folder / "devcontainer.json").write_text(json.dumps(config))
    listed = [line.split(None, 2) for line in hosts.cli.ok("ws", "configs", str(repo)).splitlines()]
    assert listed[1:3] == [
        ["config", ".devcontainer/api/devcontainer.json",
         f"kled ws up {repo} --config .devcontainer/api/devcontainer.json"],
        ["config", ".devcontainer/web/devcontainer.json",
         f"kled ws up {repo} --config .devcontainer/web/devcontainer.json"],
    ]  # fmt: skip
    assert [row[0] for row in listed[3:]] == ["project", "project"]

    # without --config, up names both and asks; with it, each config is its own workspace
    unsure = hosts.cli("ws", "up", str(repo))
    assert unsure.code == 2 and len(unsure.err.strip().splitlines()) == 1, unsure
    assert "choose one with --config" in unsure.err and ".devcontainer/web/" in unsure.err
    for name in ("api", "web"):
        config = f".devcontainer/{name}/devcontainer.json"
        up = hosts.cli("ws", "up", str(repo), "--config", config, "--name", f"both-{name}",
                       timeout=UP_TIMEOUT)  # fmt: skip
        assert up.code == 0, up
    for name in ("api", "web"):
        seen = _exec(hosts, f"both-{name}", "echo $SERVICE; pwd")
        assert seen.split() == [name, f"/workspaces/both/services/{name}"]
        hosts.cli.ok("ws", "delete", f"both-{name}", "--yes")


def test_bad_project_is_one_line_and_nothing_is_applied(hosts: Hosts, tmp_path: Path) -> None:
    repo = monorepo(tmp_path / "badproj")
    for project, words in (
        ("services/nope", "no such folder"),
        ("services", "no Dockerfile or Containerfile in it"),
        ("../elsewhere", "must be a folder inside the repository"),
    ):
        result = hosts.cli("ws", "up", str(repo), "--project", project)
        assert result.code == 2, result
        assert len(result.err.strip().splitlines()) == 1, result
        assert "--project" in result.err and words in result.err, result
    both = hosts.cli("ws", "up", str(repo), "--project", "services/api", "--config", "x.json")
    assert both.code == 2 and "--project and --config" in both.err
    assert "badproj" not in hosts.cli.ok("ws", "list")
    empty = tmp_path / "empty"
    empty.mkdir()
    note = hosts.cli("ws", "configs", str(empty))
    assert note.code == 0 and "no devcontainer.json and no Dockerfile" in note.err
    assert PRELOAD_IMAGE in note.err


def test_a_git_repository_without_config_runs_in_the_preload_image(
    hosts: Hosts, tmp_path: Path
) -> None:
    repo = tmp_path / "plainrepo"
    repo.mkdir()
    (repo / "hello.py").write_text("print('hello')\n")
    commit_all(repo, "no config")
    up = hosts.cli("ws", "up", f"file://{repo}", "--name", "plain", timeout=UP_TIMEOUT)
    if podman("image", "exists", PRELOAD_IMAGE).returncode != 0:
        # not built on this node: one line saying how, and nothing left running
        assert up.code == 1, up
        assert f"the preload image {PRELOAD_IMAGE} is not on this node" in up.err, up
        assert "kled ws image build" in up.err
        status = hosts.cli.ok("ws", "status", "plain")
        assert "Failed" in status and "kled ws image build" in status
        assert podman("container", "exists", container("plain")).returncode != 0
        assert "no devcontainer.json: the preload image" in hosts.cli.ok("ws", "logs", "plain")
    else:
        assert up.code == 0, up
        seen = hosts.cli.ok("ws", "exec", "plain", "--", "sh", "-c", "id -un; pwd; ls")
        assert seen.splitlines() == ["dev", "/workspaces/plainrepo", "hello.py"]
    hosts.cli.ok("ws", "delete", "plain", "--yes")


def _exec(hosts: Hosts, name: str, script: str) -> str:
    return hosts.cli.ok("ws", "exec", name, "--no-stdin", "--", "sh", "-c", script)


def test_recreate_keeps_files_and_volumes_and_reset_drops_them(
    hosts: Hosts, tmp_path: Path
) -> None:
    repo = tmp_path / "fresh"
    (repo / ".devcontainer").mkdir(parents=True)
    config = {
        "image": IMAGE,
        "mounts": ["source=cache,target=/cache,type=volume"],
        "onCreateCommand": "echo onCreate >> /cache/order",
    }
    (repo / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
    (repo / "tracked.txt").write_text("v1\n")
    commit_all(repo, "first")
    url = f"file://{repo}"
    hosts.cli.ok("ws", "up", url, "--name", "fresh")
    _exec(hosts, "fresh", "echo mine > made-inside.txt; echo kept > /cache/data")
    (repo / "tracked.txt").write_text("v2\n")
    commit_all(repo, "second")  # the node's clone is not pulled again by up or --recreate

    first = podman("inspect", "--format", "{{.Id}}", container("fresh")).stdout
    hosts.cli.ok("ws", "up", url, "--name", "fresh", "--recreate")
    assert podman("inspect", "--format", "{{.Id}}", container("fresh")).stdout != first
    seen = _exec(hosts, "fresh", "cat made-inside.txt /cache/data tracked.txt /cache/order")
    assert seen.split() == ["mine", "kept", "v1", "onCreate", "onCreate"]

    reset = hosts.cli("ws", "up", url, "--name", "fresh", "--reset", timeout=UP_TIMEOUT)
    assert reset.code == 0, reset
    assert "reset: dropping the workspace's files and volumes" in reset.err
    seen = _exec(hosts, "fresh", "ls; ls /cache; cat tracked.txt")
    # a fresh clone (the second commit), a new volume: only the new onCreate's line
    assert seen.split() == ["tracked.txt", "order", "v2"]
    assert _exec(hosts, "fresh", "cat /cache/order").split() == ["onCreate"]

    # a later up keeps what reset made: nothing is dropped twice
    hosts.cli.ok("ws", "up", url, "--name", "fresh")
    assert _exec(hosts, "fresh", "cat /cache/order").split() == ["onCreate"]
    hosts.cli.ok("ws", "delete", "fresh", "--yes")


def test_reset_of_an_uploaded_folder_starts_from_the_folder_again(
    hosts: Hosts, tmp_path: Path
) -> None:
    folder = tmp_path / "upl"
    (folder / ".devcontainer").mkdir(parents=True)
    config = {"image": IMAGE, "mounts": ["source=data,target=/data,type=volume"]}
    (folder / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
    (folder / "notes.txt").write_text("from the laptop\n")
    hosts.cli.ok("ws", "up", str(folder))
    _exec(hosts, "upl", "echo scratch > scratch.txt; echo v > /data/v")
    hosts.cli.ok("ws", "up", str(folder), "--recreate")
    assert _exec(hosts, "upl", "cat scratch.txt /data/v").split() == ["scratch", "v"]
    hosts.cli.ok("ws", "up", str(folder), "--reset")
    assert _exec(hosts, "upl", "ls -A; ls -A /data").split() == [".devcontainer", "notes.txt"]
    hosts.cli.ok("ws", "delete", "upl", "--yes")
