"""The agent end to end: a real nats-server, an agent process, real replica processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from imagekit import busybox_image, podman
from kled.agent.agent import Agent
from kled.agent.runtime.container import ContainerRuntime
from kled.agent.runtime.process import ProcessRuntime
from kled.bus.embedded import EmbeddedNats
from kled.bus.office import ConnectOptions, MessageOffice, StatusMessage
from kled.resources.hoststate import (
    AgentEvent,
    HostDesiredState,
    NodeHeartbeat,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    ReplicaStatusReport,
    RuntimeKind,
    utcnow,
)
from prockit import one_other, processes_with

NODE = "node-1"


async def eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll until ``check`` holds; the timeout only guards against a hang."""
    for _ in range(int(timeout / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


@dataclass
class ControlPlane:
    """What a control plane would see: the latest status per replica, events, heartbeats."""

    office: MessageOffice
    replicas: dict[str, ReplicaStatus] = field(default_factory=dict)
    events: list[AgentEvent] = field(default_factory=list)
    heartbeats: list[NodeHeartbeat] = field(default_factory=list)
    reports: list[ReplicaStatusReport] = field(default_factory=list)

    async def handle(self, m: StatusMessage) -> None:
        if isinstance(m, ReplicaStatusReport):
            self.reports.append(m)
            self.replicas[m.replica.id] = m.replica
        elif isinstance(m, AgentEvent):
            self.events.append(m)
        else:
            self.heartbeats.append(m)

    def state(self, rid: str) -> ReplicaStatus | None:
        return self.replicas.get(rid)

    def running(self, rid: str) -> bool:
        s = self.replicas.get(rid)
        return s is not None and s.state == ReplicaState.RUNNING

    def heartbeat_since(self, t: datetime) -> NodeHeartbeat | None:
        fresh = [h for h in self.heartbeats if h.time > t]
        return fresh[-1] if fresh else None


@pytest.fixture
async def control(embedded: EmbeddedNats) -> AsyncIterator[ControlPlane]:
    office = MessageOffice(
        ConnectOptions(
            url=embedded.url,
            user=embedded.control_user,
            password=embedded.control_password,
        )
    )
    await office.connect()
    await office.ensure_streams()
    cp = ControlPlane(office)
    stop = asyncio.Event()
    consumer = asyncio.create_task(office.consume_status("control", cp.handle, stop=stop))
    try:
        yield cp
    finally:
        stop.set()
        await consumer
        await office.close()


class AgentProcess:
    def __init__(self, data_dir: Path, server: EmbeddedNats, user: str, password: str) -> None:
        self.args = [
            sys.executable,
            "-m",
            "kled.agent",
            "--data-dir",
            str(data_dir),
            "--name",
            NODE,
            "--nats-url",
            server.url,
            "--nats-user",
            user,
            "--nats-password",
            password,
            "--heartbeat",
            "0.5",
            "--labels",
            "zone=test",
            # no team meshes: nothing here gives pods, and on a node with the mesh every
            # replica would first wait POD_WAIT_SECONDS for one (too close to the bounds)
            "--network",
            "off",
        ]
        self.logfile = data_dir.parent / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def replica(app: str, index: int, command: list[str]) -> ReplicaSpec:
    return ReplicaSpec(team="acme", environment="dev", app=app, index=index, command=command)


@pytest.mark.slow
async def test_agent_runs_restarts_and_adopts_replicas(
    tmp_path: Path, embedded: EmbeddedNats, control: ControlPlane
) -> None:
    m0, m1 = (str(random.randint(10**6, 10**7)) for _ in range(2))
    api0 = replica("api", 0, ["sh", "-c", f"echo hello-{m0}; exec sleep {m0}"])
    api1 = replica("api", 1, ["sleep", m1])
    ghost = replica("ghost", 0, ["kled-no-such-binary"])
    await control.office.put_desired(
        NODE, HostDesiredState(node=NODE, replicas=[api0, api1, ghost])
    )

    creds = await embedded.add_node(NODE)
    agent = AgentProcess(tmp_path / "agent", embedded, creds.user, creds.password)
    agent.start()
    try:
        # replicas reach Running; the broken one fails with a reason the user can act on
        await eventually(lambda: control.running(api0.id) and control.running(api1.id), "running")
        await eventually(lambda: control.state(ghost.id) is not None, "ghost reported")
        ghost_status = control.state(ghost.id)
        assert ghost_status is not None and ghost_status.state == ReplicaState.FAILED
        assert ghost_status.reason == "CommandNotFound"
        await eventually(
            lambda: any(e.reason == "CommandNotFound" for e in control.events), "warning event"
        )
        hb = control.heartbeats[-1]
        assert hb.labels == {"zone": "test"} and hb.capacity.cpu_millicores >= 1000

        # its output reaches the Message Office
        async def hello_logged() -> bool:
            lines = [x.line async for x in control.office.read_logs(api0.id)]
            return f"hello-{m0}" in lines

        for _ in range(100):
            if await hello_logged():
                break
            await asyncio.sleep(0.1)
        assert await hello_logged()

        # a killed replica is restarted
        first = control.state(api0.id)
        assert first is not None and first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        await eventually(
            lambda: (
                (s := control.state(api0.id)) is not None
                and s.restarts == 1
                and s.state == ReplicaState.RUNNING
            ),
            "restarted",
        )
        restarted = control.state(api0.id)
        assert restarted is not None and restarted.last_exit_code == 137
        await eventually(
            lambda: processes_with(m0) == [restarted.pid] and len(processes_with(m1)) == 1,
            "one process per replica",
        )
        pids = {m0: processes_with(m0), m1: processes_with(m1)}

        # the agent dies hard; the replicas do not; a new agent adopts them
        agent.kill9()
        assert processes_with(m0) == pids[m0] and processes_with(m1) == pids[m1]
        restart_time = utcnow()
        agent.start()

        def adopted() -> bool:
            hb = control.heartbeat_since(restart_time)
            if hb is None:
                return False
            by_id = {r.id: r for r in hb.replicas}
            return by_id.get(api0.id) is not None and by_id[api0.id].pid == pids[m0][0]

        await eventually(adopted, "heartbeat after restart shows the same pids")
        seen = len(control.heartbeats)
        await eventually(lambda: len(control.heartbeats) >= seen + 3, "a few more heartbeats")
        assert processes_with(m0) == pids[m0] and processes_with(m1) == pids[m1]

        # scaling down stops exactly the replica that is no longer desired
        await control.office.put_desired(NODE, HostDesiredState(node=NODE, replicas=[api0]))
        await eventually(lambda: processes_with(m1) == [], "api.1 stopped")
        await eventually(
            lambda: (s := control.state(api1.id)) is not None and s.state == ReplicaState.STOPPED,
            "stop reported",
        )
        assert processes_with(m0) == pids[m0]

        # an empty desired state stops everything
        await control.office.put_desired(NODE, HostDesiredState(node=NODE))
        await eventually(lambda: processes_with(m0) == [], "all stopped")
    finally:
        agent.terminate()
        for m in (m0, m1):
            for pid in processes_with(m):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
async def test_agent_rides_out_a_nats_restart_without_losing_or_repeating_status(
    tmp_path: Path, embedded: EmbeddedNats, control: ControlPlane
) -> None:
    m0, m1 = (str(random.randint(10**6, 10**7)) for _ in range(2))
    r0 = replica("api", 0, ["sleep", m0])
    r1 = replica("api", 1, ["sleep", m1])
    await control.office.put_desired(NODE, HostDesiredState(node=NODE, replicas=[r0]))
    creds = await embedded.add_node(NODE)
    office = MessageOffice(
        ConnectOptions(
            url=embedded.url,
            user=creds.user,
            password=creds.password,
            node=NODE,
            reconnect_wait=0.2,
        )
    )
    await office.connect()
    runtime = ProcessRuntime(tmp_path / "agent" / "replicas", backoff_base=0.1)
    agent = Agent(tmp_path / "agent", office, NODE, [runtime], heartbeat_interval=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await eventually(lambda: control.running(r0.id), "running")
        first = control.state(r0.id)
        assert first is not None and first.pid is not None

        await embedded.stop()
        os.kill(first.pid, signal.SIGKILL)  # happens while nobody can hear about it
        await eventually(lambda: one_other(m0, first.pid), "restarted offline")
        await embedded.start()  # same port, same storage

        # what happened while NATS was down arrives, once
        await eventually(
            lambda: (
                (s := control.state(r0.id)) is not None
                and s.restarts == 1
                and s.state == ReplicaState.RUNNING
            ),
            "restart reported after NATS came back",
        )
        # and the agent still follows its desired state
        await control.office.put_desired(NODE, HostDesiredState(node=NODE, replicas=[r0, r1]))
        await eventually(lambda: control.running(r1.id), "second replica running")
        dumped = [r.model_dump_json() for r in control.reports]
        assert len(dumped) == len(set(dumped)), "a status report was applied twice"

        await control.office.put_desired(NODE, HostDesiredState(node=NODE))
        await eventually(lambda: processes_with(m0) == processes_with(m1) == [], "all stopped")
    finally:
        stop.set()
        await task
        await office.close()
        for m in (m0, m1):
            for pid in processes_with(m):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="rootful podman needs root")
async def test_agent_runs_a_process_app_and_a_container_app(
    tmp_path: Path, embedded: EmbeddedNats, control: ControlPlane
) -> None:
    image = busybox_image(tmp_path, f"localhost/kled-test-busybox:{random.randint(10**6, 10**7)}")

    m = str(random.randint(10**6, 10**7))
    proc = replica("api", 0, ["sleep", m])
    ctr = ReplicaSpec(
        team="acme",
        environment="dev",
        app=f"web{m}",
        index=0,
        runtime=RuntimeKind.CONTAINER,
        image=image,
        command=["/bin/sh", "-c", "echo from-the-container; exec sleep 300"],
    )
    await control.office.put_desired(NODE, HostDesiredState(node=NODE, replicas=[proc, ctr]))
    creds = await embedded.add_node(NODE)
    office = MessageOffice(
        ConnectOptions(url=embedded.url, user=creds.user, password=creds.password, node=NODE)
    )
    await office.connect()
    data = tmp_path / "agent"
    runtimes = [
        ProcessRuntime(data / "replicas"),
        ContainerRuntime(data / "containers", pull=False, stop_grace=1),
    ]
    agent = Agent(data, office, NODE, runtimes, heartbeat_interval=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await eventually(lambda: control.running(proc.id) and control.running(ctr.id), "running")

        async def logged() -> bool:
            lines = [x.line async for x in control.office.read_logs(ctr.id)]
            return "from-the-container" in lines

        for _ in range(100):
            if await logged():
                break
            await asyncio.sleep(0.1)
        assert await logged()

        await control.office.put_desired(NODE, HostDesiredState(node=NODE))
        await eventually(
            lambda: (s := control.state(ctr.id)) is not None and s.state == ReplicaState.STOPPED,
            "container stopped",
        )
        name = ContainerRuntime.container_name(ctr.id)
        assert podman("container", "exists", name).returncode != 0
        await eventually(lambda: processes_with(m) == [], "process stopped")
    finally:
        stop.set()
        await task
        await office.close()
        podman("rm", "-f", ContainerRuntime.container_name(ctr.id))
        podman("rmi", "-f", image)
        for pid in processes_with(m):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
