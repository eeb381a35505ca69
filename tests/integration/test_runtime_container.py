"""The container runtime with podman and a tiny image built here from busybox."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from imagekit import busybox_image, podman
from kled.agent.probing import run_handler
from kled.agent.runtime.container import ContainerRuntime
from kled.resources.hoststate import (
    Handler,
    LogLine,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    RestartPolicy,
    RuntimeKind,
)

BUSYBOX = shutil.which("busybox")
PODMAN = shutil.which("podman")

pytestmark = [
    pytest.mark.skipif(PODMAN is None, reason="podman is not installed"),
    pytest.mark.skipif(BUSYBOX is None, reason="busybox (static) is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="rootful podman needs root"),
]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """localhost/kled-test-busybox:<random>, imported from a busybox rootfs tarball."""
    tag = busybox_image(
        tmp_path_factory.mktemp("image"),
        f"localhost/kled-test-busybox:{random.randint(10**6, 10**7)}",
        ("sh", "sleep", "echo", "cat", "env", "true"),
    )
    try:
        yield tag
    finally:
        podman("rmi", "-f", tag)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


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


def cspec(image: str, app: str, command: list[str], **kw: object) -> ReplicaSpec:
    return ReplicaSpec(
        team="acme",
        environment=f"t{random.randint(10**5, 10**6)}",
        app=app,
        index=0,
        runtime=RuntimeKind.CONTAINER,
        image=image,
        command=command,
        **kw,
    )


def container_exists(rt: ContainerRuntime, rid: str) -> bool:
    return podman("container", "exists", rt.container_name(rid)).returncode == 0


async def test_a_container_runs_logs_and_stops(
    image: str, runtime: tuple[ContainerRuntime, Seen]
) -> None:
    rt, seen = runtime
    spec = cspec(
        image,
        "web",
        ["/bin/sh", "-c", 'echo "hello $WHO"; echo oops >&2; exec sleep 300'],
        env={"WHO": "kled"},
        resources={"memory_bytes": 64 * 1024 * 1024, "cpu_millicores": 500},
    )
    status = await rt.start(spec)
    assert status.state == ReplicaState.RUNNING and status.pid
    assert await rt.start(spec) == status  # idempotent
    await eventually(lambda: len(seen.lines) >= 2, "two log lines")
    assert {(x.stream, x.line) for x in seen.lines} == {
        ("stdout", "hello kled"),
        ("stderr", "oops"),
    }
    limits = podman(
        "inspect", "--format", "{{.HostConfig.Memory}}", rt.container_name(spec.id)
    ).stdout.strip()
    assert limits == str(64 * 1024 * 1024)

    await rt.stop(spec.id)
    assert not container_exists(rt, spec.id)
    assert seen.statuses[-1].state == ReplicaState.STOPPED


async def test_a_crashing_container_is_restarted(
    image: str, runtime: tuple[ContainerRuntime, Seen]
) -> None:
    rt, seen = runtime
    spec = cspec(image, "crash", ["/bin/sh", "-c", "exit 3"])
    await rt.start(spec)
    await eventually(lambda: any(s.restarts >= 2 for s in seen.statuses), "two restarts")
    status = await rt.inspect(spec.id)
    assert status.last_exit_code == 3

    never = cspec(image, "once", ["/bin/sh", "-c", "exit 4"], restart_policy=RestartPolicy.NEVER)
    await rt.start(never)
    await eventually(
        lambda: any(s.id == never.id and s.state == ReplicaState.FAILED for s in seen.statuses),
        "failed for good",
    )
    assert (await rt.inspect(never.id)).last_exit_code == 4


async def test_a_missing_image_is_tried_again_until_it_arrives(
    image: str, runtime: tuple[ContainerRuntime, Seen]
) -> None:
    """As kubelet's ImagePullBackOff: the replica waits for its image (capped backoff) and
    starts once the image is on the node, with no restart asked for."""
    rt, seen = runtime
    later = f"localhost/kled-later-{random.randint(10**6, 10**7)}:1"
    spec = cspec(later, "noimg", ["/bin/sleep", "300"], restart_policy=RestartPolicy.NEVER)
    status = await rt.start(spec)
    assert (status.state, status.reason) == (ReplicaState.STARTING, "ImagePullBackOff")
    assert later in (status.message or "")
    podman("tag", image, later)  # after the first look: found by a later one
    try:
        await eventually(
            lambda: any(s.id == spec.id and s.state == ReplicaState.RUNNING for s in seen.statuses),
            "started once its image arrived",
        )
        assert (await rt.inspect(spec.id)).reason is None
    finally:
        podman("untag", image, later)  # that name only (alone, untag drops every name)


async def test_a_missing_command_fails_with_its_reason(
    image: str, runtime: tuple[ContainerRuntime, Seen]
) -> None:
    rt, _ = runtime
    status = await rt.start(cspec(image, "nocmd", ["/bin/kled-nope"]))
    assert (status.state, status.reason) == (ReplicaState.FAILED, "CommandNotFound")


async def test_a_new_runtime_adopts_running_containers(image: str, tmp_path: Path) -> None:
    state = tmp_path / "containers"
    old = ContainerRuntime(state, pull=False, stop_grace=1)
    spec = cspec(image, "adopt", ["/bin/sleep", "300"])
    first = await old.start(spec)
    await old.detach()
    assert container_exists(old, spec.id)

    new = ContainerRuntime(state, pull=False, stop_grace=1)
    try:
        assert await new.adopt() == [spec.id]
        again = await new.start(spec)
        assert again.pid == first.pid
        count = podman("ps", "-q", "--filter", f"name={new.container_name(spec.id)}").stdout
        assert len(count.split()) == 1
    finally:
        await new.stop(spec.id)
    assert not container_exists(new, spec.id)


async def test_exec_probes_run_inside_the_container_and_its_grace_period_is_kept(
    image: str, runtime: tuple[ContainerRuntime, Seen]
) -> None:
    rt, _ = runtime
    spec = cspec(
        image,
        "probed",
        [
            "/bin/sh",
            "-c",
            'trap "" TERM; mkdir -p /tmp; touch /tmp/up; while true; do sleep 1; done',
        ],
        termination_grace_period_seconds=3,
    )
    await rt.start(spec)
    inside = Handler(kind="exec", command=["/bin/sh", "-c", "test -f /tmp/up"])
    await eventually_async(lambda: run_handler(spec, inside, 5, rt.exec_plan), "exec probe passes")
    missing = Handler(kind="exec", command=["/bin/sh", "-c", "test -f /tmp/nope"])
    assert await run_handler(spec, missing, 5, rt.exec_plan) == (False, "exit code 1")

    began = time.monotonic()
    await rt.stop(spec.id)  # SIGTERM is ignored: SIGKILL after the spec's 3 s, not the 1 s
    assert time.monotonic() - began >= 2.5
    assert not container_exists(rt, spec.id)


async def eventually_async(
    check: Callable[[], Awaitable[tuple[bool, str]]], what: str, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    last: tuple[bool, str] = (False, "never ran")
    while time.monotonic() < deadline:
        last = await check()
        if last[0]:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"never happened: {what} (last: {last})")


async def test_a_failed_removal_is_tried_again_before_the_replica_is_let_go(
    image: str, tmp_path: Path
) -> None:
    # The engine as podman, except that the first `rm -f -t` (a replica's removal) fails
    # as a busy podman's can ("did not die within timeout"), leaving the container there.
    flag = tmp_path / "failed-once"
    wrapper = tmp_path / "podman"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" rm -f -t "*) if [ ! -e {flag} ]; then\n'
        f"  touch {flag}; echo 'given PIDs did not die within timeout' >&2; exit 125\n"
        "fi ;; esac\n"
        f'exec {PODMAN} "$@"\n'
    )
    wrapper.chmod(0o755)
    rt = ContainerRuntime(tmp_path / "containers", engine=str(wrapper), stop_grace=1, pull=False)
    spec = cspec(image, "box", ["/bin/sleep", "300"])
    try:
        assert (await rt.start(spec)).state == ReplicaState.RUNNING
        await rt.stop(spec.id)
        assert flag.exists()  # the first removal did fail
        assert await rt.list() == []
        assert not container_exists(rt, spec.id)  # and the container went with the replica
    finally:
        podman("rm", "-f", "-t", "0", rt.container_name(spec.id))
