"""Workspaces for real: ``kled ws`` against a ``kled server`` and a ``kled agent`` on podman.

A folder with ``.devcontainer/devcontainer.json`` (a local busybox image, a local feature
with an option, a named volume, containerEnv and remoteEnv, every lifecycle hook in a
different form) goes up with ``kled ws up``; the hooks' marker lines, written into the
volume, must come in the spec's order, the feature must be installed with its option, the
source must be at ``/workspaces/<folder>``. The volume keeps its lines across ``stop`` and
``start`` (which runs postStartCommand again, nothing else); ``delete`` removes the
container, the volume and the image. A git repository (``file://``) goes up too. Bad
inputs give one line and leave nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hostkit import Hosts, eventually

from cli.clikit import Cli
from imagekit import busybox_image, podman

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("workspaces")]

TEAM = f"wst-{random.randint(10**5, 10**6)}"
IMAGE = f"localhost/kled-test-ws:{TEAM}"
APPLETS = ("sh", "sleep", "echo", "cat", "mkdir", "printf", "chmod", "rm", "env", "ls", "touch")
UP_TIMEOUT = 600  # guards a hang only


def write_folder(folder: Path, config: dict[str, object]) -> Path:
    dc = folder / ".devcontainer"
    (dc / "marker").mkdir(parents=True)
    (dc / "devcontainer.json").write_text("// JSONC, as users write it\n" + json.dumps(config))
    (dc / "marker" / "devcontainer-feature.json").write_text(
        json.dumps(
            {
                "id": "marker",
                "version": "1.0.0",
                "options": {"greeting": {"type": "string", "default": "none"}},
            }
        )
    )
    (dc / "marker" / "install.sh").write_text('#!/bin/sh\necho "$GREETING" > /feature-installed\n')
    (folder / "hello.txt").write_text("hello from the laptop\n")
    (folder / ".gitignore").write_text("secret.txt\n")
    (folder / "secret.txt").write_text("never uploaded\n")
    return folder


def shop_config() -> dict[str, object]:
    return {
        "image": IMAGE,
        "features": {"./marker": {"greeting": "hi"}},
        "containerEnv": {"FROM_CONTAINER": "c1"},
        "remoteEnv": {"FROM_REMOTE": "r1"},
        "mounts": ["source=cache,target=/cache,type=volume"],
        "onCreateCommand": (
            "echo onCreate >> /cache/order; echo $FROM_REMOTE-$FROM_CONTAINER > /cache/env"
        ),
        "updateContentCommand": "echo updateContent >> /cache/order",
        "postCreateCommand": ["sh", "-c", "echo postCreate >> /cache/order"],
        "postStartCommand": "echo postStart >> /cache/order",
        "postAttachCommand": {"attach": "echo postAttach >> /cache/order"},
    }


def container(name: str) -> str:
    return f"kled-ws-{TEAM}-{name}"


def in_container(name: str, *argv: str) -> str:
    done = podman("exec", container(name), *argv)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _cleanup() -> None:
    label = "label=kled.workspace"
    for kind, listing in (
        ("container", ["ps", "-a", "-q", "--filter", label]),
        ("volume", ["volume", "ls", "-q", "--filter", label]),
        ("image", ["images", "-q", "--filter", label]),
    ):
        done = podman(*listing)
        for ident in done.stdout.split():
            if kind == "container":
                info = podman("inspect", "--format", "{{.Name}}", ident).stdout
                if TEAM not in info:
                    continue
                podman("rm", "-f", "-t", "0", ident)
            elif kind == "volume":
                if TEAM in ident:
                    podman("volume", "rm", "-f", ident)
            else:
                tags = podman("inspect", "--format", "{{.RepoTags}}", ident).stdout
                if TEAM in tags:
                    podman("rmi", "-f", ident)
    podman("rmi", "-f", IMAGE)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:

    root = tmp_path_factory.mktemp("workspaces")
    busybox_image(root / "image", IMAGE, APPLETS, dirs=("tmp", "root", "workspaces"))
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_server()
        h.cli.ok("team", "create", TEAM)
        h.start_agent("wsnode")
        eventually(lambda: h.node_phase("wsnode") == "Ready", "node wsnode Ready")
        yield h
    finally:
        h.close([])
        _cleanup()


def ws(hosts: Hosts, name: str) -> dict[str, object]:
    doc: dict[str, object] = hosts.api(f"/api/v1/teams/{TEAM}/workspaces/{name}")
    return doc


def test_up_runs_hooks_in_order_and_a_volume_survives_stop_start(
    hosts: Hosts, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "shop", shop_config())
    up = hosts.cli("ws", "up", str(folder), timeout=UP_TIMEOUT)
    assert up.code == 0, up
    assert "shop: Running" in up.err
    assert "  | [kled] postCreateCommand (devcontainer.json)" in up.err  # output, live
    status = ws(hosts, "shop")["status"]
    assert status["phase"] == "Running" and status["node"] == "wsnode"  # type: ignore[index]

    order = in_container("shop", "cat", "/cache/order").split()
    assert order == ["onCreate", "updateContent", "postCreate", "postStart", "postAttach"]
    assert in_container("shop", "cat", "/cache/env").strip() == "r1-c1"
    assert in_container("shop", "cat", "/feature-installed").strip() == "hi"
    assert in_container("shop", "cat", "/workspaces/shop/hello.txt") == "hello from the laptop\n"
    ignored = podman("exec", container("shop"), "cat", "/workspaces/shop/secret.txt")
    assert ignored.returncode != 0  # .gitignore'd: never left the laptop

    listed = hosts.cli.ok("ws", "list")
    assert "shop" in listed and "Running" in listed and "wsnode" in listed

    # kled ws exec: the exec stream of `kled exec`, in the workspace, with remoteEnv and
    # in workspaceFolder; stdin through, the command's exit code back
    seen = hosts.cli.ok("ws", "exec", "shop", "--", "sh", "-c", "echo $FROM_REMOTE; pwd")
    assert seen == "r1\n/workspaces/shop\n"
    assert hosts.cli("ws", "exec", "shop", "--", "sh", "-c", "exit 7").code == 7
    assert hosts.cli("ws", "exec", "shop", "--", "cat", stdin="typed\n").out == "typed\n"
    shell = hosts.cli("ws", "ssh", "shop", stdin="echo in-$FROM_CONTAINER\nexit 3\n")
    assert shell.code == 3 and "in-c1" in shell.out
    logs = hosts.cli.ok("ws", "logs", "shop")
    assert "postCreateCommand" in logs and "installing features: marker" in logs

    hosts.cli.ok("ws", "stop", "shop")
    assert ws(hosts, "shop")["status"]["phase"] == "Stopped"  # type: ignore[index]
    state = podman("inspect", "--format", "{{.State.Running}}", container("shop"))
    assert state.stdout.strip() == "false"
    refused = hosts.cli("ws", "exec", "shop", "--", "true")
    assert refused.code == 1 and "is Stopped, not Running" in refused.err
    assert len(refused.err.strip().splitlines()) == 1

    hosts.cli.ok("ws", "start", "shop")
    order = in_container("shop", "cat", "/cache/order").split()
    # the volume kept its lines; a start runs postStartCommand only
    assert order == [
        "onCreate", "updateContent", "postCreate", "postStart", "postAttach", "postStart",
    ]  # fmt: skip

    # Up again with the folder unchanged: the same archive, nothing rebuilt, no hook again.
    again = hosts.cli("ws", "up", str(folder), timeout=UP_TIMEOUT)
    assert again.code == 0, again
    assert len(in_container("shop", "cat", "/cache/order").split()) == 6

    hosts.cli.ok("ws", "delete", "shop", "--yes")

    def gone() -> bool:
        return (
            podman("container", "exists", container("shop")).returncode != 0
            and podman("volume", "exists", f"{container('shop')}-cache").returncode != 0
            and "shop" not in hosts.cli.ok("ws", "list")
        )

    eventually(gone, "container and volume of shop removed")


def test_a_git_repository_is_cloned_on_the_node_and_built(hosts: Hosts, tmp_path: Path) -> None:
    config = {
        "build": {"dockerfile": "Dockerfile", "args": {"GREETING": "built"}},
        "postCreateCommand": "touch /tmp/ok",
    }
    repo = write_folder(tmp_path / "repo", config)
    dockerfile = f"FROM {IMAGE}\nARG GREETING\nRUN echo $GREETING > /built\n"
    (repo / ".devcontainer" / "Dockerfile").write_text(dockerfile)
    git = ["git", "-C", str(repo), "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    up = hosts.cli("ws", "up", f"file://{repo}", "--name", "cloned", timeout=UP_TIMEOUT)
    assert up.code == 0, up
    assert in_container("cloned", "cat", "/workspaces/repo/hello.txt") == "hello from the laptop\n"
    in_container("cloned", "ls", "/tmp/ok")
    assert in_container("cloned", "cat", "/built") == "built\n"  # build.args reached the build
    hosts.cli.ok("ws", "delete", "cloned", "--yes")
    eventually(
        lambda: podman("container", "exists", container("cloned")).returncode != 0,
        "container of cloned removed",
    )


def test_a_folder_without_devcontainer_json_goes_up_in_the_preload_image(
    hosts: Hosts, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no devcontainer.json here\n")
    result = hosts.cli("ws", "up", "--no-wait", str(tmp_path / "empty"))
    assert result.code == 0, result
    assert "no devcontainer.json: the preload image kled/preload" in result.err
    assert (tmp_path / "empty").exists() and not (
        tmp_path / "empty" / ".devcontainer.json"
    ).exists()
    assert "empty" in hosts.cli.ok("ws", "list")
    hosts.cli.ok("ws", "delete", "empty", "--yes")
    eventually(lambda: "empty" not in hosts.cli.ok("ws", "list"), "the workspace gone")


def test_a_missing_config_named_by_flag_is_one_line(hosts: Hosts, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    result = hosts.cli("ws", "up", "--config", "nowhere/devcontainer.json", str(tmp_path / "plain"))
    assert result.code == 2, result
    assert len(result.err.strip().splitlines()) == 1 and "nowhere/devcontainer.json" in result.err
    assert "plain" not in hosts.cli.ok("ws", "list")


def test_an_unfetchable_feature_is_one_line_and_nothing_is_made(
    hosts: Hosts, tmp_path: Path
) -> None:
    oci = "ghcr.io/devcontainers/features/node:1"
    folder = write_folder(tmp_path / "oci", {"image": IMAGE, "features": {oci: {}}})
    result = hosts.cli("ws", "up", str(folder))
    assert result.code == 1, result  # a failure to fetch (Kled's PermanentError), not a typo
    assert len(result.err.strip().splitlines()) == 1 and oci in result.err
    assert "oci" not in hosts.cli.ok("ws", "list")
    assert podman("container", "exists", container("oci")).returncode != 0


def container_id(name: str) -> str:
    return podman("inspect", "--format", "{{.Id}}", container(name)).stdout.strip()


def test_a_restarted_agent_adopts_and_recreate_keeps_volumes(hosts: Hosts, tmp_path: Path) -> None:
    config = {
        "image": IMAGE,
        "mounts": ["source=data,target=/data,type=volume"],
        "onCreateCommand": "echo onCreate >> /data/order",
        "postStartCommand": "echo postStart >> /data/order",
    }
    folder = write_folder(tmp_path / "keep", config)
    hosts.cli.ok("ws", "up", str(folder))
    first = container_id("keep")

    hosts.kill_agent("wsnode")  # SIGKILL: no goodbye
    hosts.start_agent("wsnode", join=False)
    eventually(lambda: hosts.node_phase("wsnode") == "Ready", "node wsnode Ready again")
    # adopted: the same container, no hook ran again, and its sessions still work
    seen = eventually(
        lambda: hosts.cli("ws", "exec", "keep", "--", "cat", "/data/order").out,
        "ws exec after the agent restarted",
    )
    assert seen.split() == ["onCreate", "postStart"]
    assert container_id("keep") == first
    assert hosts.cli.ok("ws", "status", "keep").split()[:2] == ["phase", "Running"]

    # as after a reboot: the container stopped while no agent ran; the agent starts it
    hosts.kill_agent("wsnode")
    podman("stop", "-t", "0", container("keep"))
    hosts.start_agent("wsnode", join=False)

    def order_after_start() -> str:
        # an exec can come between the container's start and its postStartCommand
        out = hosts.cli("ws", "exec", "keep", "--", "cat", "/data/order").out
        return out if out.count("postStart") >= 2 else ""

    seen = eventually(order_after_start, "postStartCommand after the container started again")
    assert seen.split() == ["onCreate", "postStart", "postStart"]
    assert container_id("keep") == first

    hosts.cli.ok("ws", "up", str(folder), "--recreate")
    assert container_id("keep") != first  # a new container, with the old volume
    order = in_container("keep", "cat", "/data/order").split()
    assert order == ["onCreate", "postStart", "postStart", "onCreate", "postStart"]
    # a stop and start later, the recreate stays (no third container)
    recreated = container_id("keep")
    hosts.cli.ok("ws", "stop", "keep")
    hosts.cli.ok("ws", "start", "keep")
    assert container_id("keep") == recreated
    hosts.cli.ok("ws", "delete", "keep", "--yes")
    eventually(
        lambda: podman("container", "exists", container("keep")).returncode != 0,
        "container of keep removed",
    )


def test_a_failing_hook_is_failed_with_its_name_and_output(hosts: Hosts, tmp_path: Path) -> None:
    config = {"image": IMAGE, "postCreateCommand": "echo boom-line; exit 3"}
    folder = write_folder(tmp_path / "broken", config)
    result = hosts.cli("ws", "up", str(folder), timeout=UP_TIMEOUT)
    assert result.code == 1, result
    assert "postCreateCommand exited with code 3: boom-line" in result.err
    status = ws(hosts, "broken")["status"]
    assert status["phase"] == "Failed"  # type: ignore[index]
    # the container stays for inspection
    assert podman("container", "exists", container("broken")).returncode == 0
    assert "postCreateCommand exited with code 3" in hosts.cli.ok("ws", "status", "broken")
    # up again is another try, on a new container
    failed_in = container_id("broken")
    again = hosts.cli("ws", "up", str(folder), timeout=UP_TIMEOUT)
    assert again.code == 1 and "exited with code 3" in again.err
    assert container_id("broken") != failed_in
    hosts.cli.ok("ws", "delete", "broken", "--yes")
    eventually(
        lambda: podman("container", "exists", container("broken")).returncode != 0,
        "container of broken removed",
    )


def test_source_uploads_resume_check_their_digest_and_serve_only_nodes(hosts: Hosts) -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB: two parts of the CLI's size
    digest = hashlib.sha256(data).hexdigest()
    base = f"{hosts.url}/api/v1/teams/{TEAM}/workspace-sources/{digest}"
    auth = {"Authorization": f"Bearer {hosts.token}"}
    half = len(data) // 2
    assert httpx.put(f"{base}/parts/1", content=data[half:], headers=auth).status_code == 200
    missing = httpx.post(f"{base}/complete", params={"parts": 2}, headers=auth)
    assert missing.status_code == 422 and "parts missing: [0]" in missing.text
    assert httpx.get(base, headers=auth).json() == {"complete": False, "parts": [1]}
    assert httpx.put(f"{base}/parts/0", content=data[:half], headers=auth).status_code == 200
    done = httpx.post(f"{base}/complete", params={"parts": 2}, headers=auth)
    assert done.status_code == 200
    assert httpx.get(base, headers=auth).json()["complete"] is True

    other = "0" * 64
    wrong = f"{hosts.url}/api/v1/teams/{TEAM}/workspace-sources/{other}"
    httpx.put(f"{wrong}/parts/0", content=b"not it", headers=auth)
    refused = httpx.post(f"{wrong}/complete", params={"parts": 1}, headers=auth)
    assert refused.status_code == 422 and "do not make the archive named" in refused.text
    bad = httpx.get(f"{hosts.url}/api/v1/teams/{TEAM}/workspace-sources/nope", headers=auth)
    assert bad.status_code == 422 and "sha256" in bad.text

    reg = json.loads((hosts.root / "wsnode" / "registration.json").read_text())
    node_url = f"{hosts.url}/api/v1/nodes/wsnode/workspace-sources/{TEAM}/{digest}"
    assert httpx.get(node_url, auth=(reg["nats_user"], "wrong")).status_code == 401
    assert httpx.get(node_url, headers=auth).status_code == 401  # a user is not a node
    # the right node, but no workspace placed there names this archive
    assert httpx.get(node_url, auth=(reg["nats_user"], reg["nats_password"])).status_code == 404


def _member(hosts: Hosts, team: str, name: str, role: str, home: Path) -> Cli:
    """A logged-in CLI of a user with ``role`` in ``team`` (made when it is not ours)."""
    admin = {"Authorization": f"Bearer {hosts.token}"}
    with httpx.Client(base_url=hosts.url, headers=admin) as c:
        if team != TEAM:
            c.post("/api/v1/teams", json={"metadata": {"name": team}}).raise_for_status()
        body = {"metadata": {"name": name}, "spec": {"role": role}}
        c.post(f"/api/v1/teams/{team}/users", json=body).raise_for_status()
        token = {"metadata": {"name": f"{name}-token"}, "spec": {"user": name}}
        answer = c.post(f"/api/v1/teams/{team}/tokens", json=token)
        answer.raise_for_status()
    cli = Cli(home)
    home.mkdir(parents=True, exist_ok=True)
    cli.ok("login", "--server", hosts.url, "--token", answer.json()["token"], "--team", team)
    return cli


def test_a_viewer_may_look_not_enter_and_another_team_sees_nothing(
    hosts: Hosts, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "walled", {"image": IMAGE})
    hosts.cli.ok("ws", "up", str(folder))
    viewer = _member(hosts, TEAM, "vic", "viewer", tmp_path / "vic")
    assert viewer.ok("ws", "status", "walled").split()[:2] == ["phase", "Running"]
    refused = viewer("ws", "exec", "walled", "--", "true")
    assert refused.code == 1 and "may not update workspaces" in refused.err, refused
    stranger = _member(hosts, f"{TEAM}x", "eve", "owner", tmp_path / "eve")
    for args in (("status", "walled"), ("exec", "walled", "--", "true"), ("logs", "walled")):
        result = stranger("ws", *args, "--team", TEAM)
        assert result.code == 1 and len(result.err.strip().splitlines()) == 1, result
        assert "not found" in result.err or "does not exist" in result.err, result
    assert "walled" not in stranger.ok("ws", "list")
    hosts.cli.ok("ws", "delete", "walled", "--yes")
