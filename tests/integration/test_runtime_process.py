"""The process runtime on this host: real processes, real files, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kled.agent.runtime.process import ProcessRuntime
from kled.resources.hoststate import (
    LogLine,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    RestartPolicy,
)
from prockit import one_other, processes_with


class Seen:
    def __init__(self) -> None:
        self.statuses: list[ReplicaStatus] = []
        self.lines: list[LogLine] = []

    def status(self, s: ReplicaStatus) -> None:
        self.statuses.append(s)

    def log(self, line: LogLine) -> None:
        self.lines.append(line)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until ``check`` holds; the timeout only guards against a hang."""
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def spec(
    cmd: list[str], *, policy: RestartPolicy = RestartPolicy.ALWAYS, **kw: object
) -> ReplicaSpec:
    return ReplicaSpec(
        team="acme", environment="dev", app="api", index=0, command=cmd, restart_policy=policy, **kw
    )


def marker() -> str:
    return str(random.randint(10**6, 10**7))


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[tuple[ProcessRuntime, Seen]]:
    seen = Seen()
    rt = ProcessRuntime(
        tmp_path / "replicas",
        on_status=seen.status,
        on_log=seen.log,
        backoff_base=0.05,
        backoff_cap=0.4,
        stable_after=5.0,
        stop_grace=2.0,
        log_poll=0.05,
    )
    try:
        yield rt, seen
    finally:
        for rid in await rt.list():
            await rt.stop(rid)


async def test_start_runs_the_command_and_stop_ends_it(
    runtime: tuple[ProcessRuntime, Seen], tmp_path: Path
) -> None:
    rt, _ = runtime
    m = marker()
    workdir = tmp_path / "work"
    workdir.mkdir()
    s = spec(
        ["sh", "-c", f'echo "$GREETING from $(pwd)"; exec sleep {m}'],
        env={"GREETING": "hello"},
        working_dir=str(workdir),
    )
    status = await rt.start(s)
    assert status.state == ReplicaState.RUNNING
    assert status.pid is not None
    # the shell execs into sleep under the same pid
    await eventually(lambda: processes_with(m) == [status.pid], "sleep running")
    assert os.getsid(status.pid) == status.pid  # its own session: it outlives the agent
    assert await rt.start(s) == status  # idempotent: no second process
    assert processes_with(m) == [status.pid]
    await eventually(lambda: (rt.state_dir / s.id / "stdout.log").read_text() != "", "output")
    assert await rt.logs(s.id) == [f"hello from {workdir}"]

    await rt.stop(s.id)
    assert processes_with(m) == []
    assert await rt.list() == []
    assert not (rt.state_dir / s.id).exists()


async def test_a_crashing_replica_is_restarted_with_growing_backoff(
    runtime: tuple[ProcessRuntime, Seen],
) -> None:
    rt, seen = runtime
    s = spec(["sh", "-c", "exit 3"])
    await rt.start(s)
    await eventually(lambda: any(x.restarts >= 4 for x in seen.statuses), "4 restarts")
    backoffs = [x.message for x in seen.statuses if x.reason == "BackOff"]
    assert backoffs[:4] == [
        "exited with code 3; restarting in 0.1s",
        "exited with code 3; restarting in 0.1s",
        "exited with code 3; restarting in 0.2s",
        "exited with code 3; restarting in 0.4s",
    ]
    assert backoffs[4:6] == ["exited with code 3; restarting in 0.4s"] * len(backoffs[4:6])
    status = await rt.inspect(s.id)
    assert status.last_exit_code == 3 and status.restarts >= 4


async def test_on_failure_and_never_policies(runtime: tuple[ProcessRuntime, Seen]) -> None:
    rt, seen = runtime
    ok = spec(["true"], policy=RestartPolicy.ON_FAILURE)
    await rt.start(ok)
    await eventually(lambda: seen.statuses[-1].state == ReplicaState.SUCCEEDED, "succeeded")
    done = await rt.inspect(ok.id)
    assert (done.last_exit_code, done.restarts, done.reason) == (0, 0, "Completed")
    await rt.stop(ok.id)

    flaky = spec(["sh", "-c", "exit 1"], policy=RestartPolicy.ON_FAILURE)
    await rt.start(flaky)
    await eventually(lambda: any(x.restarts >= 2 for x in seen.statuses), "restarted on failure")
    await rt.stop(flaky.id)

    never = spec(["sh", "-c", "echo bye >&2; exit 7"], policy=RestartPolicy.NEVER)
    await rt.start(never)
    await eventually(lambda: seen.statuses[-1].state == ReplicaState.FAILED, "failed")
    failed = await rt.inspect(never.id)
    assert (failed.last_exit_code, failed.restarts, failed.message) == (7, 0, "exited with code 7")
    await eventually(lambda: any(x.line == "bye" for x in seen.lines), "stderr forwarded")
    assert [x.stream for x in seen.lines if x.line == "bye"] == ["stderr"]


async def test_a_missing_command_fails_with_an_actionable_reason(
    runtime: tuple[ProcessRuntime, Seen],
) -> None:
    rt, _ = runtime
    status = await rt.start(spec(["no-such-command-kled", "--serve"]))
    assert status.state == ReplicaState.FAILED
    assert status.reason == "CommandNotFound"
    assert "no-such-command-kled" in (status.message or "")
    assert "spec.command" in (status.message or "")

    status = await rt.start(spec(["/nonexistent/bin/app"]).model_copy(update={"index": 1}))
    assert status.reason == "CommandNotFound"


async def test_killed_replica_is_restarted_with_a_new_pid(
    runtime: tuple[ProcessRuntime, Seen],
) -> None:
    rt, _ = runtime
    m = marker()
    s = spec(["sleep", m])
    first = await rt.start(s)
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)
    await eventually(lambda: one_other(m, first.pid), "restarted")
    status = await rt.inspect(s.id)
    assert status.restarts == 1 and status.last_exit_code == 128 + signal.SIGKILL
    assert status.state == ReplicaState.RUNNING and status.pid == processes_with(m)[0]


async def test_a_new_runtime_adopts_what_the_old_one_started(tmp_path: Path) -> None:
    m = marker()
    state = tmp_path / "replicas"
    old = ProcessRuntime(state, backoff_base=0.05)
    s = spec(["sh", "-c", f"echo started; exec sleep {m}"])
    first = await old.start(s)
    await eventually(lambda: processes_with(m) == [first.pid], "sleep running")
    await old.detach()  # the agent goes away; the replica does not
    assert processes_with(m) == [first.pid]

    seen = Seen()
    new = ProcessRuntime(state, backoff_base=0.05, on_status=seen.status, log_poll=0.05)
    try:
        assert await new.adopt() == [s.id]
        assert await new.list() == [s.id]
        status = await new.start(s)  # the reconciler asks again: nothing new is started
        assert status.pid == first.pid and processes_with(m) == [first.pid]

        # the adopted process is still supervised
        assert first.pid is not None
        os.kill(first.pid, signal.SIGTERM)
        await eventually(lambda: one_other(m, first.pid), "restart")
        after = await new.inspect(s.id)
        assert after.restarts == 1 and after.last_exit_code is None
        assert "exit code unknown" in (seen.statuses[0].message or "")
    finally:
        await new.stop(s.id)
    assert processes_with(m) == []


async def test_a_recycled_pid_is_not_mistaken_for_the_replica(tmp_path: Path) -> None:
    m = marker()
    state = tmp_path / "replicas"
    old = ProcessRuntime(state)
    s = spec(["sleep", m])
    first = await old.start(s)
    await old.detach()
    record = state / s.id / "record.json"
    raw = json.loads(record.read_text())
    raw["create_time"] = 1.0  # as if that pid now belonged to another process
    record.write_text(json.dumps(raw))

    new = ProcessRuntime(state, backoff_base=0.05)
    try:
        await new.adopt()
        await eventually(lambda: len(processes_with(m)) == 2, "a fresh replica next to it")
        await new.stop(s.id)
        assert processes_with(m) == [first.pid]  # the stranger is left alone
    finally:
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)


async def test_output_is_forwarded_and_rotated(tmp_path: Path) -> None:
    seen = Seen()
    rt = ProcessRuntime(
        tmp_path / "replicas", on_log=seen.log, log_max_bytes=300, log_keep=2, log_poll=0.02
    )
    script = "i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); sleep 0.005; done; sleep 60"
    s = spec(["sh", "-c", script])
    try:
        await rt.start(s)
        await eventually(lambda: any(x.line == "line-199" for x in seen.lines), "all lines")
        directory = rt.state_dir / s.id
        names = sorted(p.name for p in directory.iterdir() if p.name.startswith("stdout"))
        assert names == ["stdout.log", "stdout.log.1", "stdout.log.2"]
        assert all(p.stat().st_size < 2000 for p in directory.glob("stdout.log*"))
        lines = [x.line for x in seen.lines]
        assert lines[:3] == ["line-0", "line-1", "line-2"]
        assert [x.seq for x in seen.lines] == list(range(1, len(seen.lines) + 1))
        assert len(lines) >= 190  # a line in the instant of a rotation may be missed
    finally:
        await rt.stop(s.id)
