"""Issue 10, item 7 and the README's tour as a user runs it, on ``kled up``: a Secret given
to an app that serves its working directory is not served, not on the agent's disk in
clear; the server's files are private; ``kled delete app --wait`` returns once the app's
replicas, processes or containers, are gone."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from clikit import Cli, ServerProcess, free_port

from imagekit import busybox_image, podman
from kled.cli.server import local_node_name

MARKER = random.randint(7_000_000, 7_999_999)
PODMAN = shutil.which("podman")
BUSYBOX = shutil.which("busybox")


def _until(check: object, what: str, tries: int = 600) -> None:
    assert callable(check)
    for _ in range(tries):
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def up(cli: Cli) -> Iterator[ServerProcess]:
    """`kled up` (no team meshes: replicas listen on the host), its node Ready."""
    port = free_port()
    server = ServerProcess(cli, cli.home / ".local" / "share" / "kled", port)
    server.proc = cli.popen("up", "--listen", f"127.0.0.1:{port}", "--agent-network", "off")
    try:
        node = local_node_name()

        def ready() -> bool:
            done = cli("node", "list", "-o", "json")
            if done.code != 0:
                return False
            return any(
                n["metadata"]["name"] == node and (n.get("status") or {}).get("phase") == "Ready"
                for n in json.loads(done.out)["items"]
            )

        _until(ready, "the local node Ready")
        team = f"files-{MARKER}-{random.randint(100, 999)}"
        cli.ok("team", "create", team)
        cli.ok("context", "set", "--team", team)
        cli.ok("env", "create", "dev")
        yield server
    finally:
        server.stop(signal.SIGINT)
        cli("down")
        server.stop(signal.SIGKILL)


def apply(cli: Cli, *docs: dict[str, object]) -> None:
    cli.ok("apply", "-f", "-", "-e", "dev", stdin=yaml.safe_dump_all(docs))


def running(cli: Cli, app: str) -> bool:
    rows = cli.ok("get", "apps", "-e", "dev").splitlines()[1:]
    return any(r.split()[:1] == [app] and "Running" in r.split() for r in rows)


def files_holding(root: Path, needle: str) -> list[Path]:
    return [
        p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()
    ]  # fmt: skip


@pytest.mark.slow
def test_a_secret_given_to_an_app_serving_its_folder_stays_off_the_mesh_and_the_disk(
    cli: Cli, up: ServerProcess
) -> None:
    secret, port = f"tour-{random.randint(10**12, 10**13)}", free_port()
    apply(
        cli,
        {"apiVersion": "kled.io/v1", "kind": "Secret", "metadata": {"name": "db"},
         "stringData": {"DB_PASSWORD": secret}},
        {"apiVersion": "kled.io/v1", "kind": "App", "metadata": {"name": "api"},
         "spec": {"command": [sys.executable, "-m", "http.server", str(port), "--bind",
                              "127.0.0.1"],
                  "envFrom": [{"secret": "db"}]}},
    )  # fmt: skip
    _until(lambda: running(cli, "api"), "api Running")
    replica = next(
        p for p in psutil.process_iter(["cmdline"]) if str(port) in (p.info["cmdline"] or [])
    )
    assert replica.environ().get("DB_PASSWORD") == secret  # the app has its secret...
    listing = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert listing.status_code == 200
    assert "record.json" not in listing.text and "stdout.log" not in listing.text
    for probe in ("record.json", "stdout.log", "../record.json"):
        answer = httpx.get(f"http://127.0.0.1:{port}/{probe}", timeout=5)
        assert answer.status_code == 404 and secret not in answer.text

    # ...and nobody else: not the agent's files, not the server's database, nor the
    # Message Office's store of the desired states that carry it to the agent
    data = up.data_dir
    agent = data / "agent"
    assert files_holding(data, secret) == []
    for path in [data, agent, *agent.rglob("*"), *data.glob("kled.db*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {mode:o}"
    assert Path(replica.cwd()).is_relative_to(agent) and list(Path(replica.cwd()).iterdir()) == []

    # `kled delete app --wait` returns when the replica is gone, and says how long it took
    done = cli.ok("delete", "app", "api", "-e", "dev", "--wait")
    assert re.search(r"app/api gone, its replicas stopped on 1 node\(s\), after \d+\.\ds", done)
    assert not replica.is_running() or replica.status() == psutil.STATUS_ZOMBIE


@pytest.fixture
def image(tmp_path: Path) -> Iterator[str]:
    tag = busybox_image(tmp_path, f"localhost/kled-delete-wait:{MARKER}", ("sh", "sleep"))
    try:
        yield tag
    finally:
        podman("rmi", "-f", tag)


@pytest.mark.slow
def test_delete_wait_returns_when_the_apps_containers_are_gone(
    cli: Cli, up: ServerProcess, image: str
) -> None:
    # sleep as PID 1 ignores SIGTERM: the container ends when its grace period does
    apply(
        cli,
        {"apiVersion": "kled.io/v1", "kind": "App", "metadata": {"name": "box"},
         "spec": {"runtime": "container", "image": image, "replicas": 2,
                  "terminationGracePeriodSeconds": 4,
                  "command": ["/bin/sleep", str(MARKER)]}},
    )  # fmt: skip

    def containers() -> list[str]:
        listed = podman(
            "ps", "-a", "--format", "{{.Names}}", "--filter", f"label=io.kled.app-uid={uid}"
        )
        return listed.stdout.split()

    uid = json.loads(cli.ok("get", "app", "box", "-e", "dev", "-o", "json"))["metadata"]["uid"]
    _until(lambda: running(cli, "box") and len(containers()) == 2, "two containers Running")
    done = cli("delete", "app", "box", "-e", "dev", "--wait")
    assert "app/box gone, its replicas stopped on 1 node(s)" in done.out, done
    left = podman("ps", "-a", "--format", "{{.Names}} {{.Status}}", "--filter",
                  f"label=io.kled.app-uid={uid}").stdout  # fmt: skip
    assert left == "", (left, done)  # podman shows none, not ~39 s later: now
