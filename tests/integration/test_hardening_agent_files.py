"""Issue 10, item 7: what a replica can read of the agent's files, and what those files hold.

A replica used to run in the agent's own folder for it, beside ``record.json`` (0644) with
its resolved environment in clear: ``python3 -m http.server`` served the decrypted Secrets
to the mesh. These tests run real replicas (processes, podman containers) and look at what
a user of the host, or of the replica, would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from imagekit import busybox_image, podman
from kled.agent.runtime.container import ContainerRuntime
from kled.agent.runtime.process import ProcessRuntime
from kled.errors import InvalidInput
from kled.resources.hoststate import ReplicaSpec, ReplicaState, RuntimeKind
from kled.resources.kinds import validate


async def eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def secret_value() -> str:
    return f"s3cret-{random.randint(10**9, 10**10)}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def files_holding(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle`` (what `grep -r` would find)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            found.append(path)
    return found


def open_modes(root: Path) -> list[str]:
    """Folders not 0700 and files not 0600 under (and including) ``root``."""
    wrong = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode != want:
            wrong.append(f"{path.relative_to(root.parent)} {mode:o}")
    return wrong


def http_server(port: int, **kw: object) -> ReplicaSpec:
    return ReplicaSpec(
        team="acme",
        environment="dev",
        app="api",
        index=0,
        command=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    rt = ProcessRuntime(tmp_path / "agent" / "replicas", backoff_base=0.05, log_poll=0.05)
    try:
        yield rt
    finally:
        for rid in await rt.list():
            await rt.stop(rid)


async def serving(port: int) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                return await client.get(f"http://127.0.0.1:{port}/")
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing answers on port {port}")


async def test_a_replica_serving_its_working_directory_serves_none_of_the_agents_files(
    processes: ProcessRuntime,
) -> None:
    port, secret = free_port(), secret_value()
    spec = http_server(port, env={"DB_PASSWORD": secret})
    status = await processes.start(spec)
    assert status.state == ReplicaState.RUNNING and status.pid
    listing = await serving(port)
    assert listing.status_code == 200
    for name in ("record.json", "stdout.log", "stderr.log", "record.key"):
        assert name not in listing.text
    async with httpx.AsyncClient() as client:
        for probe in ("record.json", "../record.json", "%2e%2e/record.json", "stdout.log"):
            answer = await client.get(f"http://127.0.0.1:{port}/{probe}")
            assert answer.status_code == 404, probe
            assert secret not in answer.text
    # its working directory is an empty folder of its own, outside the agent's state
    cwd = Path(psutil.Process(status.pid).cwd())
    assert processes.state_dir not in (cwd, *cwd.parents)
    assert list(cwd.iterdir()) == []
    assert stat.S_IMODE(cwd.stat().st_mode) == 0o700

    await processes.stop(spec.id)
    assert not cwd.exists()  # the empty folder goes with the replica


async def test_an_apps_working_directory_is_used_as_given(
    processes: ProcessRuntime, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from the app's folder")
    port = free_port()
    status = await processes.start(http_server(port, working_dir=str(site)))
    assert status.pid and Path(psutil.Process(status.pid).cwd()) == site
    assert (await serving(port)).text == "hello from the app's folder"


def test_an_apps_working_directory_must_be_absolute() -> None:
    app = {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": "api", "team": "acme", "environment": "dev"},
        "spec": {"command": ["true"], "workingDir": "srv/app"},
    }
    with pytest.raises(InvalidInput) as refused:
        validate(app)
    assert "spec.workingDir" in str(refused.value) and "absolute" in str(refused.value)
    app["spec"]["workingDir"] = "/srv/app"  # type: ignore[index]
    assert validate(app)["spec"]["workingDir"] == "/srv/app"


async def test_the_agents_files_are_private_and_hold_no_secret_in_clear(
    processes: ProcessRuntime, tmp_path: Path
) -> None:
    secret = secret_value()
    spec = ReplicaSpec(
        team="acme",
        environment="dev",
        app="worker",
        index=0,
        command=["sh", "-c", 'test "$API_KEY" = "$EXPECTED" && echo matched; exec sleep 600'],
        env={"API_KEY": secret, "EXPECTED": secret},
        restart_policy="Never",
    )
    first = await processes.start(spec)
    state = processes.state_dir
    await eventually(lambda: b"matched" in (state / spec.id / "stdout.log").read_bytes(), "output")
    assert open_modes(state) == [] and open_modes(processes.work_root) == []
    assert files_holding(tmp_path, secret) == []
    record = json.loads((state / spec.id / "record.json").read_text())
    assert "env" not in record["spec"] and record["pid"] == first.pid

    # A restarted agent still adopts it exactly: same process, same spec, env included.
    await processes.detach()
    again = ProcessRuntime(state, backoff_base=0.05)
    try:
        assert await again.adopt() == [spec.id]
        assert await again.spec_of(spec.id) == spec
        assert (await again.start(spec)).pid == first.pid
    finally:
        await again.stop(spec.id)
    assert first.pid is not None and not running(first.pid)


async def test_records_an_older_version_left_open_are_sealed_at_start(tmp_path: Path) -> None:
    secret = secret_value()
    state = tmp_path / "agent" / "replicas"
    old = ProcessRuntime(state)
    spec = ReplicaSpec(
        team="acme", environment="dev", app="old", index=0, command=["sleep", "600"],
        env={"TOKEN": secret},
    )  # fmt: skip
    first = await old.start(spec)
    await old.detach()
    # what the previous version left: the environment in clear, 0644 under 0755
    record = state / spec.id / "record.json"
    raw = json.loads(record.read_text())
    raw["spec"]["env"] = raw.pop("sealedEnv") and {"TOKEN": secret}
    record.write_text(json.dumps(raw))
    for path in (state, state / spec.id, record, state / spec.id / "stdout.log"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    assert files_holding(state, secret) == [record]

    new = ProcessRuntime(state)
    try:
        assert await new.adopt() == [spec.id]
        assert files_holding(state, secret) == []
        assert open_modes(state) == []
        assert await new.spec_of(spec.id) == spec
        assert (await new.start(spec)).pid == first.pid
    finally:
        await new.stop(spec.id)


async def test_a_replica_whose_record_key_is_lost_is_adopted_and_replaced(tmp_path: Path) -> None:
    state = tmp_path / "agent" / "replicas"
    old = ProcessRuntime(state)
    spec = ReplicaSpec(
        team="acme", environment="dev", app="lost", index=0, command=["sleep", "600"],
        env={"TOKEN": secret_value()},
    )  # fmt: skip
    first = await old.start(spec)
    await old.detach()
    (state / "record.key").unlink()

    new = ProcessRuntime(state)
    try:
        assert await new.adopt() == [spec.id]  # not orphaned: it is still this agent's
        adopted = await new.spec_of(spec.id)
        assert adopted is not None and adopted.env == {} and adopted != spec
        replaced = await new.start(spec)  # what the reconciler does: the spec differs
        assert replaced.pid != first.pid
        assert first.pid is not None and not running(first.pid)
    finally:
        await new.stop(spec.id)


# -- containers ------------------------------------------------------------------------------

PODMAN = shutil.which("podman")
BUSYBOX = shutil.which("busybox")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tag = busybox_image(
        tmp_path_factory.mktemp("image"),
        f"localhost/kled-hardening:{random.randint(10**6, 10**7)}",
        ("sh", "sleep", "echo", "test", "["),
    )
    try:
        yield tag
    finally:
        podman("rmi", "-f", tag)


@pytest.fixture
async def containers(tmp_path: Path) -> AsyncIterator[ContainerRuntime]:
    rt = ContainerRuntime(
        tmp_path / "agent" / "containers", stop_grace=1, pull=False, backoff_base=0.1
    )
    try:
        yield rt
    finally:
        for rid in await rt.list():
            await rt.stop(rid)


def container_spec(image: str, command: list[str], **kw: object) -> ReplicaSpec:
    return ReplicaSpec(
        team="acme",
        environment=f"t{random.randint(10**5, 10**6)}",
        app="web",
        index=0,
        runtime=RuntimeKind.CONTAINER,
        image=image,
        command=command,
        **kw,  # type: ignore[arg-type]
    )


async def test_a_containers_secrets_stay_out_of_the_command_line_and_the_agents_files(
    image: str, containers: ContainerRuntime, tmp_path: Path
) -> None:
    secret, pem = secret_value(), f"-----BEGIN KEY-----\n{secret_value()}\n-----END KEY-----"
    check = 'test "$API_KEY" = "$EXPECTED" && test "$PEM" = "$PEM_EXPECTED" && echo matched'
    spec = container_spec(
        image,
        ["/bin/sh", "-c", f"{check}; exec sleep 600"],
        env={"API_KEY": secret, "EXPECTED": secret, "PEM": pem, "PEM_EXPECTED": pem},
    )
    status = await containers.start(spec)
    assert status.state == ReplicaState.RUNNING
    name = containers.container_name(spec.id)
    await eventually(lambda: "matched" in podman("logs", name).stdout, "the env arrived", 60)
    # what `ps` showed while the engine ran, as the engine kept it
    argv = podman("inspect", "--format", "{{json .Config.CreateCommand}}", name).stdout
    assert name in argv and secret not in argv and pem.splitlines()[1] not in argv
    assert files_holding(tmp_path, secret) == []
    assert files_holding(tmp_path, pem.splitlines()[1]) == []
    assert open_modes(containers.state_dir) == []


async def test_a_deleted_containers_replica_is_gone_within_its_grace_period(
    image: str, containers: ContainerRuntime
) -> None:
    # sleep as PID 1 ignores SIGTERM: only the grace period's SIGKILL ends it
    spec = container_spec(image, ["/bin/sleep", "600"])
    await containers.start(spec)
    name = containers.container_name(spec.id)

    def watched() -> bool:  # the runtime's `podman wait` on it runs: the supervisor waits
        return any(
            (p.info["cmdline"] or [])[-2:] == ["wait", name]
            for p in psutil.process_iter(["cmdline"])
        )

    await eventually(watched, "the runtime waiting on the container")
    await asyncio.sleep(1)  # as an app is: deleted a while after it started, not at once
    started = time.monotonic()
    await containers.stop(spec.id)
    took = time.monotonic() - started
    assert podman("ps", "-aq", "--filter", f"name={name}").stdout.strip() == ""
    assert await containers.list() == []
    # Not a speed claim: the grace is 1 s; the defect was a 30 s wait for `podman wait`.
    assert took < containers.stop_grace + 15, f"stop took {took:.1f}s"
