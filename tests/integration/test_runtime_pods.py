"""A container replica as a pod: init containers, sidecars on localhost, volumes (podman)."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from imagekit import busybox_image, podman
from kled.agent.runtime.container import ContainerRuntime
from kled.agent.runtime.podvolumes import is_tmpfs
from kled.resources.hoststate import (
    ContainerSpec,
    FileSpec,
    LogLine,
    MountSpec,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    RuntimeKind,
    VolumeSpec,
)

pytestmark = [
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="rootful podman needs root"),
    pytest.mark.skipif(not is_tmpfs(Path("/dev/shm")), reason="/dev/shm is not a tmpfs"),
]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tag = busybox_image(
        tmp_path_factory.mktemp("image"),
        f"localhost/kled-test-pod:{random.randint(10**6, 10**7)}",
        ("sh", "sleep", "echo", "cat", "httpd", "wget", "ls", "stat", "mkdir"),
        dirs=("www", "tmp"),
    )
    try:
        yield tag
    finally:
        podman("rmi", "-f", tag)


class Seen:
    def __init__(self) -> None:
        self.statuses: list[ReplicaStatus] = []
        self.lines: list[LogLine] = []


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[tuple[ContainerRuntime, Seen]]:
    seen = Seen()
    rt = ContainerRuntime(
        tmp_path / "containers",
        on_status=seen.statuses.append,
        on_log=seen.lines.append,
        backoff_base=0.1,
        backoff_cap=0.4,
        stop_grace=1,
        pull=False,
        log_poll=0.1,
    )
    try:
        yield rt, seen
    finally:
        for rid in await rt.list():
            await rt.stop(rid)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


URL = "http://127.0.0.1:8080/"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def pod_spec(image: str, token: str) -> ReplicaSpec:
    return ReplicaSpec(
        team="acme",
        environment=f"t{random.randint(10**5, 10**6)}",
        app="web",
        index=0,
        runtime=RuntimeKind.CONTAINER,
        image=image,
        command=["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/srv"],
        init_containers=[
            ContainerSpec(
                name="fill",
                image=image,
                command=["sh", "-c", "echo made-by-init > /work/index.html; echo init done"],
                mounts=[MountSpec(volume="shared", path="/work")],
            )
        ],
        sidecars=[
            ContainerSpec(
                name="poll",
                image=image,
                command=["sh", "-c", f"while true; do wget -qO- {URL}; sleep 1; done"],
                env={"ROLE": "sidecar"},
                mounts=[MountSpec(volume="shared", path="/shared")],
            )
        ],
        volumes=[
            VolumeSpec(name="shared", kind="emptyDir"),
            VolumeSpec(name="token", kind="secret",
                       files=[FileSpec(path="token", data=b64(token), mode=0o400)]),
            VolumeSpec(name="conf", kind="config",
                       files=[FileSpec(path="app/app.conf", data=b64("level=debug"))]),
        ],
        mounts=[
            MountSpec(volume="shared", path="/srv"),
            MountSpec(volume="token", path="/etc/token", read_only=True),
            MountSpec(volume="conf", path="/etc/app.conf", sub_path="app/app.conf"),
        ],
    )  # fmt: skip


def run_in(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


async def test_a_pod_runs_init_then_main_and_a_sidecar_that_reaches_it_on_localhost(
    image: str, runtime: tuple[ContainerRuntime, Seen], tmp_path: Path
) -> None:
    rt, seen = runtime
    spec = pod_spec(image, "s3cr3t-token")
    status = await rt.start(spec)
    assert status.state == ReplicaState.RUNNING, (status.reason, status.message)
    # the sidecar fetches what the init container wrote into the shared emptyDir, from
    # the main container's server on 127.0.0.1: one network namespace, one volume
    await eventually(
        lambda: any(x.container == "poll" and x.line == "made-by-init" for x in seen.lines),
        "the sidecar's line from the main container",
    )
    assert any(x.container == "fill" and x.line == "init done" for x in seen.lines)
    await eventually(
        lambda: (s := seen.statuses[-1].containers.get("poll")) is not None and s.running,
        "the sidecar reported running",
    )
    # exec into the sidecar, and into the main container's volumes
    side = run_in(rt.exec_plan_in(spec, "poll", ["sh", "-c", "echo $ROLE; cat /shared/*"]).argv)
    assert side.stdout.split() == ["sidecar", "made-by-init"], side.stderr
    script = "cat /etc/token/token; echo; cat /etc/app.conf; echo; stat -c %a /etc/token/token"
    main = run_in(rt.exec_plan(spec, ["sh", "-c", script]).argv)
    assert main.stdout.split() == ["s3cr3t-token", "level=debug", "400"], main.stderr
    ro = run_in(rt.exec_plan(spec, ["sh", "-c", "echo x > /etc/token/other"]).argv)
    assert ro.returncode != 0  # mounted read-only
    # the Secret's value is in memory (the tmpfs), nowhere under the agent's state folder
    folder = rt.volumes.folder(spec.id)
    assert (folder / "token" / "token").read_text() == "s3cr3t-token"
    on_disk = [p.read_bytes() for p in (tmp_path / "containers").rglob("*") if p.is_file()]
    assert not any(b"s3cr3t-token" in data for data in on_disk)  # record.json is sealed

    # a new Secret value: the file changes in place, nothing restarts
    pid = podman("inspect", "--format", "{{.State.Pid}}", rt.container_name(spec.id)).stdout
    newer = pod_spec(image, "rotated")
    newer = newer.model_copy(update={"environment": spec.environment})
    await rt.start(newer)
    again = run_in(rt.exec_plan(newer, ["cat", "/etc/token/token"]).argv)
    assert again.stdout == "rotated"
    assert podman("inspect", "--format", "{{.State.Pid}}", rt.container_name(spec.id)).stdout == pid

    # stopping the replica removes every container of the pod and its volumes
    await rt.stop(spec.id)
    for name in (rt.container_name(spec.id), rt.container_name(spec.id, "poll")):
        assert podman("container", "exists", name).returncode != 0
    assert not folder.exists()


async def test_a_sidecar_is_restarted_and_counted_apart(
    image: str, runtime: tuple[ContainerRuntime, Seen]
) -> None:
    rt, seen = runtime
    spec = ReplicaSpec(
        team="acme",
        environment=f"t{random.randint(10**5, 10**6)}",
        app="web",
        index=0,
        runtime=RuntimeKind.CONTAINER,
        image=image,
        command=["sleep", "300"],
        sidecars=[ContainerSpec(name="flaky", image=image, command=["sh", "-c", "exit 3"])],
    )
    await rt.start(spec)
    await eventually(
        lambda: (c := seen.statuses[-1].containers.get("flaky")) is not None and c.restarts >= 2,
        "two restarts of the sidecar",
    )
    last = seen.statuses[-1]
    assert last.state == ReplicaState.RUNNING and last.restarts == 0
    assert last.containers["flaky"].last_exit_code == 3


async def test_a_failing_init_container_under_never_fails_the_replica(
    image: str, runtime: tuple[ContainerRuntime, Seen]
) -> None:
    rt, _ = runtime
    spec = ReplicaSpec(
        team="acme",
        environment=f"t{random.randint(10**5, 10**6)}",
        app="web",
        index=0,
        runtime=RuntimeKind.CONTAINER,
        image=image,
        command=["sleep", "300"],
        restart_policy="Never",
        init_containers=[ContainerSpec(name="check", image=image, command=["sh", "-c", "exit 7"])],
    )
    status = await rt.start(spec)
    assert status.state == ReplicaState.FAILED
    assert status.reason == "Init:Error" and status.last_exit_code == 7
    assert podman("container", "exists", rt.container_name(spec.id)).returncode != 0


async def test_a_restarted_agent_adopts_the_pods_sidecars(image: str, tmp_path: Path) -> None:
    state = tmp_path / "adopt"
    first = ContainerRuntime(state, backoff_base=0.1, stop_grace=1, pull=False, log_poll=0.1)
    spec = ReplicaSpec(
        team="acme",
        environment=f"t{random.randint(10**5, 10**6)}",
        app="web",
        index=0,
        runtime=RuntimeKind.CONTAINER,
        image=image,
        command=["sleep", "300"],
        sidecars=[ContainerSpec(name="side", image=image, command=["sleep", "300"])],
        volumes=[VolumeSpec(name="tok", kind="secret", files=[FileSpec(path="t", data=b64("x"))])],
        mounts=[MountSpec(volume="tok", path="/tok")],
    )
    await first.start(spec)
    await eventually(
        lambda: (
            (c := first._replicas[spec.id].status.containers.get("side")) is not None and c.running
        ),
        "the sidecar running",
    )
    await first.detach()  # the agent exits; the pod runs on
    seen = Seen()
    second = ContainerRuntime(
        state, on_status=seen.statuses.append, backoff_base=0.1, stop_grace=1, pull=False
    )
    try:
        assert await second.adopt() == [spec.id]
        assert await second.spec_of(spec.id) == spec  # sidecars and volume files unsealed
        side = second.container_name(spec.id, "side")

        def started() -> str:
            return podman(
                "inspect", "--format", "{{.State.Status}} {{.State.StartedAt}}", side
            ).stdout

        before = started()
        assert before.startswith("running")
        killed = await asyncio.to_thread(podman, "kill", side)
        assert killed.returncode == 0, killed.stderr
        # the adopted sidecar is supervised: started again
        await eventually(lambda: started().startswith("running") and started() != before,
                         "the killed sidecar running again")  # fmt: skip
    finally:
        await second.stop(spec.id)
    assert podman("container", "exists", second.container_name(spec.id, "side")).returncode != 0
    assert not second.volumes.folder(spec.id).exists()


async def test_secret_files_are_never_put_on_a_disk(image: str, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if is_tmpfs(disk):
        pytest.skip(f"{disk} is a tmpfs here")
    rt = ContainerRuntime(tmp_path / "c", stop_grace=1, pull=False, volume_root=disk)
    spec = ReplicaSpec(
        team="acme",
        environment=f"t{random.randint(10**5, 10**6)}",
        app="web",
        index=0,
        runtime=RuntimeKind.CONTAINER,
        image=image,
        command=["sleep", "300"],
        volumes=[VolumeSpec(name="tok", kind="secret", files=[FileSpec(path="t", data=b64("x"))])],
        mounts=[MountSpec(volume="tok", path="/tok")],
    )
    try:
        status = await rt.start(spec)
        assert (status.state, status.reason) == (ReplicaState.FAILED, "NoMemoryVolumes")
        assert "is not a tmpfs" in (status.message or "")
        assert not any(disk.iterdir())
        assert podman("container", "exists", rt.container_name(spec.id)).returncode != 0
    finally:
        await rt.stop(spec.id)
