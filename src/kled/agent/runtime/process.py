"""The process runtime: each replica a supervised process of the host.

A replica runs in its own session (so it outlives the agent), with its stdout and stderr
in files under ``<state_dir>/<replica id>/``, beside ``record.json``: the spec it was
started with (its environment sealed, see ``records``), its pid and that pid's start time
(a recycled pid is never mistaken for the replica), its restart count and its last status.
That folder is the agent's, private, and never the replica's working directory: a replica
runs in its app's ``workingDir``, or else in an empty folder of its own under
``work_root``, so that a replica serving its working directory (``python3 -m
http.server``) serves nothing of the agent's. A restarted agent reads those records and
re-attaches to what still runs: no duplicate, no orphan. Exits are noticed through a pidfd,
which also works for processes the agent adopted and is not the parent of; the exit code
of an adopted process is unknown to the agent and reported as such.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from kled.agent.runtime import records
from kled.agent.runtime.base import (
    IGNORE_LOG,
    IGNORE_STATUS,
    ExecPlan,
    LogSink,
    StatusSink,
    grace_of,
)
from kled.agent.runtime.cgroups import Cgroups, join_cgroup
from kled.agent.runtime.logfiles import LogFollower, open_for_child, tail_lines
from kled.errors import NotFound
from kled.resources.hoststate import (
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    RestartPolicy,
    RuntimeKind,
    utcnow,
)

log = logging.getLogger(__name__)

_BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


class _StartFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Replica:
    spec: ReplicaSpec
    directory: Path
    status: ReplicaStatus
    pid: int | None = None
    create_time: float | None = None
    popen: subprocess.Popen[bytes] | None = None
    log_seq: int = 0
    supervisor: asyncio.Task[None] | None = None
    follower: LogFollower | None = None
    follower_task: asyncio.Task[None] | None = None
    first_attempt: asyncio.Event = field(default_factory=asyncio.Event)


class ProcessRuntime:
    """Runs replicas as host processes under ``state_dir``."""

    kind = RuntimeKind.PROCESS

    def __init__(
        self,
        state_dir: str | Path,
        *,
        on_status: StatusSink = IGNORE_STATUS,
        on_log: LogSink = IGNORE_LOG,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        stable_after: float = 10.0,
        stop_grace: float = 30.0,
        log_max_bytes: int = 10 * 1024 * 1024,
        log_keep: int = 3,
        log_poll: float = 0.5,
        cgroups: Cgroups | None = None,
        work_root: str | Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.records = records.RecordBook(self.state_dir)
        #: where replicas without a ``workingDir`` run, each in an empty folder of its own
        default_work = self.state_dir.with_name(f"{self.state_dir.name}-work")
        self.work_root = Path(work_root) if work_root else default_work
        self.on_status = on_status
        self.on_log = on_log
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stable_after = stable_after
        self.stop_grace = stop_grace
        self.log_max_bytes = log_max_bytes
        self.log_keep = log_keep
        self.log_poll = log_poll
        self.cgroups = cgroups if cgroups is not None else Cgroups()
        self._replicas: dict[str, _Replica] = {}

    # -- the Runtime protocol -------------------------------------------------------------------
    async def start(self, spec: ReplicaSpec) -> ReplicaStatus:
        rep = self._replicas.get(spec.id)
        if rep is not None and rep.spec == spec:
            return rep.status.model_copy()
        if rep is not None:
            await self.stop(spec.id)
        directory = self.records.folder(spec.id)
        status = ReplicaStatus(id=spec.id, state=ReplicaState.STARTING, generation=spec.generation)
        rep = _Replica(spec=spec, directory=directory, status=status)
        self._replicas[spec.id] = rep
        self._persist(rep)
        self._follow(rep, from_end=False)
        rep.supervisor = asyncio.create_task(self._supervise(rep, adopted=False))
        await rep.first_attempt.wait()
        return rep.status.model_copy()

    async def stop(self, replica_id: str) -> None:
        rep = self._replicas.get(replica_id)
        if rep is None:
            return
        if rep.supervisor is not None:
            rep.supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rep.supervisor
        if rep.pid is not None:
            await self._terminate(rep)
        if self._replicas.get(replica_id) is rep:
            del self._replicas[replica_id]  # listed (as the node reports it) until it ended
        if rep.follower is not None:
            rep.follower.poll(flush=True)
        if rep.follower_task is not None:
            rep.follower_task.cancel()
        self.cgroups.remove(replica_id)
        shutil.rmtree(rep.directory, ignore_errors=True)
        shutil.rmtree(self.work_root / replica_id, ignore_errors=True)
        log.info("replica/%s stopped", replica_id)
        self.on_status(rep.status.model_copy(update={"state": ReplicaState.STOPPED, "pid": None}))

    async def inspect(self, replica_id: str) -> ReplicaStatus:
        rep = self._replicas.get(replica_id)
        if rep is None:
            raise NotFound(f"replica {replica_id} is not known to the process runtime")
        return rep.status.model_copy()

    async def list(self) -> builtins.list[str]:
        return sorted(self._replicas)

    async def spec_of(self, replica_id: str) -> ReplicaSpec | None:
        rep = self._replicas.get(replica_id)
        return rep.spec if rep else None

    async def logs(self, replica_id: str, *, tail: int = 100) -> builtins.list[str]:
        directory = self.state_dir / replica_id
        if not directory.is_dir():
            raise NotFound(f"replica {replica_id} has no logs here")
        return tail_lines(directory, "stdout", tail) + tail_lines(directory, "stderr", tail)

    async def adopt(self) -> builtins.list[str]:
        adopted: builtins.list[str] = []
        for record in self.records.records():
            try:
                rep = self._load(record)
            except (OSError, ValueError) as err:
                log.warning("unreadable replica record %s: %s", record, err)
                continue
            if rep.spec.id in self._replicas:
                continue
            self._persist(rep)  # sealed, if an older version left its environment in clear
            self._replicas[rep.spec.id] = rep
            adopted.append(rep.spec.id)
            alive = rep.pid is not None and _same_process(rep.pid, rep.create_time)
            if alive:
                log.info("replica/%s adopted pid=%s", rep.spec.id, rep.pid)
                self._follow(rep, from_end=True)
                rep.supervisor = asyncio.create_task(self._supervise(rep, adopted=True))
            elif rep.status.state in (ReplicaState.RUNNING, ReplicaState.STARTING):
                # it ended while the agent was away: its restart policy decides
                rep.pid = None
                self._follow(rep, from_end=True)
                rep.supervisor = asyncio.create_task(self._supervise(rep, adopted=True))
        return adopted

    async def detach(self) -> None:
        for rep in self._replicas.values():
            for task in (rep.supervisor, rep.follower_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if rep.follower is not None:
                rep.follower.poll(flush=True)
                rep.log_seq = rep.follower.seq
                self._persist(rep)
        self._replicas.clear()

    # -- supervision ------------------------------------------------------------------------------
    async def _supervise(self, rep: _Replica, *, adopted: bool) -> None:
        failures = 0
        if adopted:
            code: int | None = None
            ran = 0.0
            if rep.pid is not None:  # still running: watch it to its end
                started = time.monotonic()
                code = await self._wait_exit(rep)
                ran = time.monotonic() - started
            rep.pid, rep.popen = None, None
            if not await self._after_exit(rep, code, ran, failures):
                return
            failures = 0 if ran >= self.stable_after else failures + 1
        while True:
            try:
                self._spawn(rep)
            except _StartFailed as err:
                self._set(
                    rep, ReplicaState.FAILED, pid=None, reason=err.reason, message=err.message
                )
                log.warning("replica/%s failed to start: %s", rep.spec.id, err.message)
                rep.first_attempt.set()
                return
            rep.first_attempt.set()
            started = time.monotonic()
            code = await self._wait_exit(rep)
            ran = time.monotonic() - started
            rep.pid, rep.popen = None, None
            if ran >= self.stable_after:
                failures = 0
            if not await self._after_exit(rep, code, ran, failures):
                return
            failures += 1

    async def _after_exit(self, rep: _Replica, code: int | None, ran: float, failures: int) -> bool:
        """Apply the restart policy: False when the replica is done, else sleep the backoff."""
        policy = rep.spec.restart_policy
        failed = code != 0
        what = _describe_exit(code)
        log.info("replica/%s exited (%s) after %.1fs", rep.spec.id, what, ran)
        restart = policy == RestartPolicy.ALWAYS or (policy == RestartPolicy.ON_FAILURE and failed)
        if not restart:
            state = ReplicaState.FAILED if failed else ReplicaState.SUCCEEDED
            reason = ("Error" if code is not None else "Unknown") if failed else "Completed"
            self._set(rep, state, pid=None, last_exit_code=code, reason=reason, message=what)
            return False
        delay = min(self.backoff_base * float(2**failures), self.backoff_cap)
        self._set(
            rep,
            ReplicaState.STARTING,
            pid=None,
            last_exit_code=code,
            reason="BackOff",
            message=f"{what}; restarting in {delay:.1f}s",
        )
        await asyncio.sleep(delay)
        rep.status.restarts += 1
        return True

    def exec_plan(self, spec: ReplicaSpec, command: builtins.list[str]) -> ExecPlan:
        """``command`` in the replica's pod namespace, working dir and environment."""
        env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
        env.update(spec.env)
        argv = list(command)
        if spec.pod_netns:
            argv = [shutil.which("ip") or "ip", "netns", "exec", os.path.basename(spec.pod_netns),
                    *argv]  # fmt: skip
        cwd = spec.working_dir or str(records.private_dir(self.work_root) / spec.id)
        return ExecPlan(argv=argv, cwd=cwd if os.path.isdir(cwd) else None, env=env)

    def _spawn(self, rep: _Replica) -> None:
        spec = rep.spec
        argv = [*spec.command, *spec.args]
        if not argv:
            raise _StartFailed("InvalidSpec", "the app has no command: set spec.command")
        env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
        env.update(spec.env)
        exe = argv[0]
        if "/" in exe:
            path = exe if os.path.isabs(exe) else os.path.join(spec.working_dir or "/", exe)
            found = exe if os.access(path, os.X_OK) and os.path.isfile(path) else None
        else:
            found = shutil.which(exe, path=env.get("PATH", os.defpath))
        if found is None:
            raise _StartFailed(
                "CommandNotFound",
                f"command {exe!r} was not found on node (PATH={env.get('PATH', os.defpath)}); "
                "fix spec.command or install it on the node",
            )
        if spec.pod_netns:
            # `ip netns exec` enters the pod's namespace, mounts its resolv.conf over
            # /etc/resolv.conf, then execs the command: the pid stays the replica's.
            argv = [shutil.which("ip") or "ip", "netns", "exec", os.path.basename(spec.pod_netns),
                    *argv]  # fmt: skip
        if spec.working_dir:
            cwd = spec.working_dir
        else:
            cwd = str(records.private_dir(records.private_dir(self.work_root) / spec.id))
        if not os.path.isdir(cwd):
            raise _StartFailed(
                "WorkingDirNotFound", f"working directory {cwd!r} does not exist on the node"
            )
        cgroup = self.cgroups.prepare(spec.id, spec.resources)
        out = open_for_child(rep.directory, "stdout")
        err = open_for_child(rep.directory, "stderr")
        try:
            # Popen returns as soon as the child is forked; exits are watched by pidfd
            rep.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=(lambda: join_cgroup(cgroup)) if cgroup else None,
            )
        except OSError as e:
            raise _StartFailed("StartError", f"cannot start {exe!r}: {e.strerror}") from e
        finally:
            os.close(out)
            os.close(err)
        rep.pid = rep.popen.pid
        rep.create_time = _create_time(rep.pid)
        self._set(
            rep,
            ReplicaState.RUNNING,
            pid=rep.pid,
            started_at=utcnow(),
            reason=None,
            message=None,
        )
        log.info("replica/%s started pid=%s", spec.id, rep.pid)

    async def _wait_exit(self, rep: _Replica) -> int | None:
        assert rep.pid is not None
        await _wait_pid(rep.pid)
        if rep.popen is not None:
            return _exit_code(rep.popen.wait())
        return None

    async def _terminate(self, rep: _Replica) -> None:
        pid = rep.pid
        if pid is None or not _same_process(pid, rep.create_time):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_wait_pid(pid), grace_of(rep.spec, self.stop_grace))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # and whatever it left in its group
        await _wait_pid(pid)
        if rep.popen is not None:
            rep.popen.wait()
        rep.pid = None

    # -- records ----------------------------------------------------------------------------------
    def _set(self, rep: _Replica, state: ReplicaState, **changes: object) -> None:
        new = rep.status.model_copy(update={"state": state, **changes})
        if new.same_as(rep.status):
            return
        rep.status = new
        self._persist(rep)
        self.on_status(new.model_copy())

    def _persist(self, rep: _Replica) -> None:
        if rep.follower is not None:
            rep.log_seq = rep.follower.seq
        self.records.write(
            rep.directory,
            rep.spec,
            status=rep.status.model_dump(mode="json"),
            pid=rep.pid,
            create_time=rep.create_time,
            log_seq=rep.log_seq,
        )

    def _load(self, path: Path) -> _Replica:
        spec, raw = self.records.read(path)
        rep = _Replica(
            spec=spec,
            directory=path.parent,
            status=ReplicaStatus.model_validate(raw["status"]),
            pid=raw.get("pid"),
            create_time=raw.get("create_time"),
            log_seq=int(raw.get("log_seq", 0)),
        )
        rep.first_attempt.set()
        return rep

    def _follow(self, rep: _Replica, *, from_end: bool) -> None:
        rep.follower = LogFollower(
            rep.spec.id,
            rep.directory,
            self.on_log,
            max_bytes=self.log_max_bytes,
            keep=self.log_keep,
            from_end=from_end,
            seq=rep.log_seq,
        )
        rep.follower_task = asyncio.create_task(rep.follower.run(self.log_poll))


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_process(pid: int, create_time: float | None) -> bool:
    """True if ``pid`` is still the process that was started (not a recycled pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 0.05
    except psutil.Error:
        return False


async def _wait_pid(pid: int) -> None:
    """Wait until ``pid`` exits, parent or not, without polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def exited() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, exited)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _exit_code(returncode: int) -> int:
    # like a shell: death by signal N is 128 + N
    return 128 - returncode if returncode < 0 else returncode


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exited while the agent was away (exit code unknown)"
    if code > 128:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(code - 128).name} (exit code {code})"
    return f"exited with code {code}"
