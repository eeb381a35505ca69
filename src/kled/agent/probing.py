"""Runs the probes and hooks of this host's replicas: the async shell around ``probes``.

A check is made from inside the replica's network: an HTTP GET or a TCP connection to the
pod IP from a socket created inside the pod's namespace (by a short-lived thread that
alone enters it, as the DNS relay does), or to 127.0.0.1 for a replica without a pod; an
``exec`` runs the command as the runtime says (``ip netns exec`` with the replica's
working dir and env for a process, ``podman exec`` for a container). Each probe of each
running replica has its own task on its own period; a new run of a replica (another pid
or start time) gets fresh probes. ``Probers`` tells the agent when a replica's readiness
changes and when a probe wants it restarted; the agent decides what that means.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kled.agent.net import netns
from kled.agent.probes import ProbeKind, ProbeState
from kled.agent.runtime.base import ExecPlan
from kled.resources.hoststate import Handler, ReplicaSpec, ReplicaState, ReplicaStatus

log = logging.getLogger(__name__)

_MAX_STATUS_LINE = 1024

ExecPlanner = Callable[[ReplicaSpec, list[str]], ExecPlan]


def _tcp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


def socket_in(netns_path: str | None) -> socket.socket:
    """A non-blocking TCP socket made inside ``netns_path`` (or here, when None)."""
    if netns_path is None:
        return _tcp_socket()
    return netns.made_in(netns_path, _tcp_socket)


async def _connect(spec: ReplicaSpec, port: int) -> socket.socket:
    sock = await asyncio.to_thread(socket_in, spec.pod_netns)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (spec.pod_ip or "127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _http_get(spec: ReplicaSpec, handler: Handler) -> tuple[bool, str]:
    assert handler.port is not None
    sock = await _connect(spec, handler.port)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        host = f"{spec.pod_ip or '127.0.0.1'}:{handler.port}"
        lines = [f"GET {handler.path} HTTP/1.1", f"Host: {host}", "User-Agent: kled-probe/1",
                 "Accept: */*", "Connection: close"]  # fmt: skip
        lines += [f"{name}: {value}" for name, value in handler.headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        first = (await reader.readline())[:_MAX_STATUS_LINE].decode("latin-1").split()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if len(first) < 2 or not first[0].startswith("HTTP/") or not first[1].isdigit():
        return False, "not an HTTP answer"
    code = int(first[1])
    return 200 <= code < 400, f"HTTP {code}"


async def _exec(plan: ExecPlan) -> tuple[bool, str]:
    proc = await asyncio.create_subprocess_exec(
        *plan.argv,
        cwd=plan.cwd,
        env=plan.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        raise
    if proc.returncode == 0:
        return True, "exit code 0"
    tail = out.decode(errors="replace").strip().splitlines()[-1:] or [""]
    return False, f"exit code {proc.returncode}" + (f": {tail[0][:200]}" if tail[0] else "")


async def run_handler(
    spec: ReplicaSpec, handler: Handler, timeout: float, exec_plan: ExecPlanner
) -> tuple[bool, str]:
    """Run one check or hook; (passed, what happened), never raising for its failure."""
    try:
        async with asyncio.timeout(timeout):
            if handler.kind == "exec":
                return await _exec(exec_plan(spec, list(handler.command)))
            if handler.kind == "httpGet":
                return await _http_get(spec, handler)
            assert handler.port is not None
            (await _connect(spec, handler.port)).close()
            return True, "connected"
    except TimeoutError:
        return False, f"timed out after {timeout:g}s"
    except OSError as e:
        return False, os.strerror(e.errno) if e.errno else str(e)


@dataclass
class _Run:
    """The probes of one run of one replica."""

    spec: ReplicaSpec
    key: tuple[object, ...]
    state: ProbeState
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


def has_probes(spec: ReplicaSpec) -> bool:
    return any(p is not None for p in (spec.readiness_probe, spec.liveness_probe,
                                       spec.startup_probe))  # fmt: skip


class Probers:
    """The probes of every running replica on this host."""

    def __init__(
        self,
        exec_plan: Callable[[ReplicaSpec], ExecPlanner],
        on_ready_changed: Callable[[str], None],
        on_restart: Callable[[ReplicaSpec, str], None],
    ) -> None:
        self._exec_plan = exec_plan
        self._on_ready_changed = on_ready_changed
        self._on_restart = on_restart
        self._runs: dict[str, _Run] = {}
        self._stopping: set[str] = set()

    def sync(self, observed: Mapping[str, tuple[ReplicaSpec, ReplicaStatus]]) -> None:
        """Probe exactly the running replicas that have probes, each run afresh."""
        for rid in list(self._runs):
            spec_status = observed.get(rid)
            if spec_status is None or _key(*spec_status) != self._runs[rid].key:
                self._runs.pop(rid).cancel()
        self._stopping &= set(observed)
        for rid, (spec, status) in observed.items():
            if rid in self._runs or rid in self._stopping or not has_probes(spec):
                continue
            if status.state != ReplicaState.RUNNING:
                continue
            run = _Run(spec=spec, key=_key(spec, status), state=ProbeState.of(spec))
            for kind in ProbeKind:
                if run.state.probe(kind) is not None:
                    run.tasks.append(asyncio.create_task(self._probe(run, kind),
                                                         name=f"probe-{rid}-{kind}"))  # fmt: skip
            self._runs[rid] = run

    def ready(self, spec: ReplicaSpec | None, status: ReplicaStatus) -> bool:
        """Whether the replica may serve now."""
        if status.state != ReplicaState.RUNNING or status.id in self._stopping:
            return False
        run = self._runs.get(status.id)
        if run is not None and run.key == _key(run.spec, status):
            return run.state.ready
        # Not probed (yet): ready unless a probe must pass first.
        return spec is None or (spec.readiness_probe is None and spec.startup_probe is None)

    def stopping(self, replica_id: str) -> None:
        """The replica is about to stop: not ready from now on, no more probes."""
        self._stopping.add(replica_id)
        run = self._runs.pop(replica_id, None)
        if run is not None:
            run.state.stop()
            run.cancel()

    def stopped(self, replica_id: str) -> None:
        """The replica has stopped; a new start of it is probed afresh."""
        self._stopping.discard(replica_id)

    def close(self) -> None:
        for run in self._runs.values():
            run.cancel()
        self._runs.clear()

    async def _probe(self, run: _Run, kind: ProbeKind) -> None:
        probe = run.state.probe(kind)
        assert probe is not None
        rid = run.spec.id
        await asyncio.sleep(probe.initial_delay_seconds)
        last: tuple[bool, str] | None = None
        while run.state.restart is None and not run.state.stopping:
            if run.state.active(kind):
                planner = self._exec_plan(run.spec)
                ok, what = await run_handler(run.spec, probe, probe.timeout_seconds, planner)
                before = run.state.ready
                restart = run.state.record(kind, ok, what)
                if (ok, what) != last and (not ok or last is not None):
                    # once per change, not every period
                    log.info("%s %s probe %s: %s", run.spec.resource_name, kind,
                             "passed" if ok else "failed", what)  # fmt: skip
                last = (ok, what)
                if run.state.ready != before:
                    log.info("%s ready=%s", run.spec.resource_name, run.state.ready)
                    self._on_ready_changed(rid)
                if restart is not None:
                    self._on_restart(run.spec, restart.message)
                    return
            await asyncio.sleep(probe.period_seconds)


def _key(spec: ReplicaSpec, status: ReplicaStatus) -> tuple[object, ...]:
    """What one run of a replica is: a restart or a new spec gives another run."""
    return (spec, status.pid, status.started_at)
