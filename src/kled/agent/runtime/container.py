"""The container runtime: replicas as podman (or docker) containers, through the CLI.

The engine's CLI is the seam: no engine library, no socket API. A replica is the container
``kled-<replica id>``; beside it, ``<state_dir>/<replica id>/record.json`` keeps the spec it
was started with (its environment sealed, see ``records``) and its restart count, so a
restarted agent adopts it. The agent
supervises restarts itself (``<engine> wait``, then ``<engine> start`` after a backoff), as
the process runtime does, so both report restarts and exit codes alike.

Host quirks are detected, not hard-coded: on a host without a unified cgroup v2 tree,
rootful podman needs ``--runtime runc --cgroup-manager cgroupfs``; runc there cannot raise
the ``nofile`` or ``nproc`` limits past what the host allows, so both are set explicitly
at or under the host's hard limits.

A replica's environment may hold Secrets, so it never appears in the engine's command line
(which any user of the host sees in ``ps``): single-line values go through an env file
(0600, in the replica's private folder, removed as soon as ``run`` returns), multi-line
ones (which an env file cannot carry) through the engine's own environment as ``--env
KEY``. Deleting a replica stops its container within ``stop_grace`` seconds: the commands
that only watch it (``wait``) are ended at once, not waited for.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import re
import resource
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kled.agent.runtime import records
from kled.agent.runtime.base import (
    IGNORE_LOG,
    IGNORE_STATUS,
    ExecPlan,
    LogSink,
    StatusSink,
    grace_of,
)
from kled.errors import NotFound, Unavailable
from kled.resources.hoststate import (
    LogLine,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    RestartPolicy,
    RuntimeKind,
    utcnow,
)

log = logging.getLogger(__name__)

#: seconds a cancelled engine command may take to finish before it is killed
_CLI_GRACE = 30.0

_NANOS = re.compile(r"(\.\d{6})\d+")
_NPROC_CAP = 32768  # runc on hybrid-cgroup hosts refuses more (measured on the test hosts)
#: names the engine, its libraries or the dynamic loader read from their own environment:
#: an app's variable never reaches the engine's environment under one of these names
_ENGINE_ENV = re.compile(
    r"(LD_|GO|CONTAINERS_|XDG_|DOCKER_|BUILDAH_|STORAGE_|PODMAN_|CONMON_|SSL_CERT_|LC_).*"
    r"|PATH|HOME|TMPDIR|TZ|LANG|NOTIFY_SOCKET|REGISTRY_AUTH_FILE|container"
    r"|.*_(PROXY|proxy)"
)


def container_engine() -> str | None:
    """``podman`` or ``docker``, whichever is installed (podman first)."""
    for engine in ("podman", "docker"):
        path = shutil.which(engine)
        if path:
            return path
    return None


def engine_flags(engine: str) -> tuple[list[str], list[str]]:
    """(global flags, run flags) this host needs for ``engine``."""
    global_flags: list[str] = []
    run_flags: list[str] = []
    if os.path.basename(engine) == "podman":
        unified = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        if not unified and shutil.which("runc"):
            global_flags += ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
    _, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _, nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if nofile_hard != resource.RLIM_INFINITY:
        run_flags += ["--ulimit", f"nofile={min(1024, nofile_hard)}:{nofile_hard}"]
    nproc = _NPROC_CAP if nproc_hard == resource.RLIM_INFINITY else min(nproc_hard, _NPROC_CAP)
    run_flags += ["--ulimit", f"nproc={min(4096, nproc)}:{nproc}"]
    return global_flags, run_flags


@dataclass
class _Replica:
    spec: ReplicaSpec
    directory: Path
    status: ReplicaStatus
    supervisor: asyncio.Task[None] | None = None
    follower: asyncio.Task[None] | None = None
    log_offset: int = 0
    log_seq: int = 0
    first_attempt: asyncio.Event = field(default_factory=asyncio.Event)


class _StartFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ContainerRuntime:
    """Runs replicas as containers of the host's engine."""

    kind = RuntimeKind.CONTAINER

    def __init__(
        self,
        state_dir: str | Path,
        *,
        engine: str | None = None,
        on_status: StatusSink = IGNORE_STATUS,
        on_log: LogSink = IGNORE_LOG,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        stable_after: float = 10.0,
        stop_grace: int = 30,
        pull: bool = True,
        pull_timeout: float = 120.0,
        log_max_bytes: int = 10 * 1024 * 1024,
        log_poll: float = 0.5,
    ) -> None:
        found = engine or container_engine()
        if found is None:
            raise Unavailable("no container engine: install podman or docker on this node")
        self.engine = found
        self.global_flags, self.run_flags = engine_flags(found)
        self.state_dir = Path(state_dir)
        self.records = records.RecordBook(self.state_dir)
        self.on_status = on_status
        self.on_log = on_log
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stable_after = stable_after
        self.stop_grace = stop_grace
        self.pull = pull
        self.pull_timeout = pull_timeout
        self.log_max_bytes = log_max_bytes
        self.log_poll = log_poll
        self._replicas: dict[str, _Replica] = {}

    def exec_plan(self, spec: ReplicaSpec, command: builtins.list[str]) -> ExecPlan:
        """``podman exec`` of ``command`` in the replica's container."""
        name = self.container_name(spec.id)
        return ExecPlan(argv=[self.engine, *self.global_flags, "exec", name, *command])

    @staticmethod
    def container_name(replica_id: str) -> str:
        return f"kled-{replica_id}"

    # -- the Runtime protocol ---------------------------------------------------------------
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
        rep.supervisor = asyncio.create_task(self._supervise(rep, adopted=False))
        rep.follower = asyncio.create_task(self._follow(rep))
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
        # Listed (as the node reports it) until its container is gone.
        name = self.container_name(replica_id)
        grace = round(grace_of(rep.spec, self.stop_grace))
        await self._cli("rm", "-f", "-t", str(grace), name)
        if self._replicas.get(replica_id) is rep:
            del self._replicas[replica_id]
        if rep.follower is not None:
            self._forward(rep)
            rep.follower.cancel()
        shutil.rmtree(rep.directory, ignore_errors=True)
        log.info("replica/%s container removed", replica_id)
        self.on_status(rep.status.model_copy(update={"state": ReplicaState.STOPPED, "pid": None}))

    async def inspect(self, replica_id: str) -> ReplicaStatus:
        rep = self._replicas.get(replica_id)
        if rep is None:
            raise NotFound(f"replica {replica_id} is not known to the container runtime")
        return rep.status.model_copy()

    async def list(self) -> builtins.list[str]:
        return sorted(self._replicas)

    async def spec_of(self, replica_id: str) -> ReplicaSpec | None:
        rep = self._replicas.get(replica_id)
        return rep.spec if rep else None

    async def logs(self, replica_id: str, *, tail: int = 100) -> builtins.list[str]:
        rc, out, _ = await self._cli("logs", "--tail", str(tail), self.container_name(replica_id))
        if rc != 0:
            raise NotFound(f"replica {replica_id} has no container here")
        return out.splitlines()

    async def adopt(self) -> builtins.list[str]:
        adopted: builtins.list[str] = []
        for record in self.records.records():
            try:
                spec, raw = self.records.read(record)
                rep = _Replica(
                    spec=spec,
                    directory=record.parent,
                    status=ReplicaStatus.model_validate(raw["status"]),
                    log_seq=int(raw.get("log_seq", 0)),
                )
            except (OSError, ValueError) as err:
                log.warning("unreadable replica record %s: %s", record, err)
                continue
            if rep.spec.id in self._replicas:
                continue
            rep.first_attempt.set()
            self._persist(rep)  # sealed, if an older version left its environment in clear
            with contextlib.suppress(OSError):
                rep.log_offset = (rep.directory / "container.log").stat().st_size
            self._replicas[rep.spec.id] = rep
            adopted.append(rep.spec.id)
            if rep.status.state in (ReplicaState.RUNNING, ReplicaState.STARTING):
                rep.supervisor = asyncio.create_task(self._supervise(rep, adopted=True))
                rep.follower = asyncio.create_task(self._follow(rep))
        return adopted

    async def detach(self) -> None:
        for rep in self._replicas.values():
            for task in (rep.supervisor, rep.follower):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._persist(rep)
        self._replicas.clear()

    # -- supervision ---------------------------------------------------------------------------
    async def _supervise(self, rep: _Replica, *, adopted: bool) -> None:
        failures = 0
        name = self.container_name(rep.spec.id)
        running = False
        if adopted:
            state = await self._state(name)
            running = state is not None and state["Status"] == "running"
            if state is None:
                adopted = False  # gone while the agent was away: run it anew
        while True:
            if not running:
                try:
                    if adopted:
                        await self._restart_existing(name)
                    else:
                        await self._run(rep)
                        adopted = True  # from now on the container exists
                except _StartFailed as err:
                    self._set(
                        rep, ReplicaState.FAILED, pid=None, reason=err.reason, message=err.message
                    )
                    log.warning("replica/%s failed to start: %s", rep.spec.id, err.message)
                    rep.first_attempt.set()
                    return
            running = False
            state = await self._state(name)
            pid = state.get("Pid") if state else None
            self._set(
                rep,
                ReplicaState.RUNNING,
                pid=pid or None,
                started_at=utcnow(),
                reason=None,
                message=None,
            )
            rep.first_attempt.set()
            started = time.monotonic()
            code = await self._wait(name)
            ran = time.monotonic() - started
            if ran >= self.stable_after:
                failures = 0
            if not await self._after_exit(rep, code, failures):
                return
            failures += 1

    async def _after_exit(self, rep: _Replica, code: int | None, failures: int) -> bool:
        policy = rep.spec.restart_policy
        failed = code != 0
        what = "exited (exit code unknown)" if code is None else f"exited with code {code}"
        restart = policy == RestartPolicy.ALWAYS or (policy == RestartPolicy.ON_FAILURE and failed)
        if not restart:
            state = ReplicaState.FAILED if failed else ReplicaState.SUCCEEDED
            reason = "Error" if failed else "Completed"
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

    async def _run(self, rep: _Replica) -> None:
        spec = rep.spec
        if not spec.image:
            raise _StartFailed("InvalidSpec", "a container app needs spec.image")
        await self._ensure_image(spec.image)
        name = self.container_name(spec.id)
        await self._cli("rm", "-f", name)
        logfile = rep.directory / "container.log"
        args = [
            "run", "-d", "--name", name,
            "--label", f"io.kled.replica={spec.id}",
            "--label", f"io.kled.app-uid={spec.app_uid}",
            "--log-driver", "k8s-file",
            "--log-opt", f"path={logfile}",
            *self.run_flags,
        ]  # fmt: skip
        if os.path.basename(self.engine) == "podman":
            args += ["--log-opt", f"max-size={self.log_max_bytes}"]
        if spec.pod_netns:
            # Join the pod namespace the network layer built, and use the resolver that
            # `ip netns exec` would give a process (the team gateway, with search domains).
            args += ["--network", f"ns:{spec.pod_netns}"]
            resolv = Path("/etc/netns", os.path.basename(spec.pod_netns), "resolv.conf")
            if resolv.exists():
                args += ["--volume", f"{resolv}:/etc/resolv.conf:ro"]
        env_file = rep.directory / "run.env"
        lines, engine_env = [], {}
        for key, value in sorted(spec.env.items()):
            if "\n" not in value and "\r" not in value:
                lines.append(f"{key}={value}\n")
            elif _ENGINE_ENV.fullmatch(key):
                args += ["--env", f"{key}={value}"]  # never a secret's name: keep the engine's
            else:
                args += ["--env", key]
                engine_env[key] = value
        if lines:
            records.write_private(env_file, "".join(lines).encode())
            args += ["--env-file", str(env_file)]
        for port in spec.ports:
            args += ["--expose", f"{port.target_port or port.port}/{port.protocol.lower()}"]
        if spec.resources.memory_bytes:
            args += ["--memory", str(spec.resources.memory_bytes)]
        if spec.resources.cpu_millicores:
            args += ["--cpus", f"{spec.resources.cpu_millicores / 1000:.3f}"]
        if spec.working_dir:
            args += ["--workdir", spec.working_dir]
        if spec.command:
            args += ["--entrypoint", json.dumps(spec.command)]
        args += [spec.image, *spec.args]
        try:
            rc, _, err = await self._cli(*args, env=engine_env)
        finally:
            env_file.unlink(missing_ok=True)
        if rc != 0:
            raise _classify(err, spec)
        log.info("replica/%s container started image=%s", spec.id, spec.image)

    async def _restart_existing(self, name: str) -> None:
        rc, _, err = await self._cli("start", name)
        if rc != 0:
            raise _StartFailed("StartError", err.strip() or f"cannot start container {name}")

    async def _ensure_image(self, image: str) -> None:
        rc, _, _ = await self._cli("image", "inspect", "--format", "{{.Id}}", image)
        if rc == 0:
            return
        if self.pull:
            try:
                rc, _, err = await asyncio.wait_for(self._cli("pull", image), self.pull_timeout)
            except TimeoutError:
                rc, err = 1, "pull timed out"
            if rc == 0:
                return
            log.info("image %s could not be pulled: %s", image, err.strip())
        raise _StartFailed(
            "ImageNotFound",
            f"image {image!r} is not on the node and could not be pulled; check spec.image, "
            "or load the image on the node (podman load / podman import)",
        )

    async def _state(self, name: str) -> dict[str, object] | None:
        rc, out, _ = await self._cli("inspect", "--format", "{{json .State}}", name)
        if rc != 0:
            return None
        try:
            state: dict[str, object] = json.loads(out.strip().splitlines()[0])
        except (ValueError, IndexError):
            return None
        return state

    async def _wait(self, name: str) -> int | None:
        rc, out, _ = await self._cli("wait", name, watch_only=True)
        if rc != 0:
            return None
        with contextlib.suppress(ValueError):
            return int(out.strip().splitlines()[-1])
        return None

    async def _cli(
        self, *args: str, env: dict[str, str] | None = None, watch_only: bool = False
    ) -> tuple[int, str, str]:
        """Run the engine; ``env`` adds to its environment, ``watch_only`` marks a command
        that changes nothing (``wait``), which a cancellation ends at once."""
        proc = await asyncio.create_subprocess_exec(
            self.engine,
            *self.global_flags,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env} if env else None,
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            if watch_only:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise
            # Let the engine finish (a `run` killed halfway leaves its conmon and a
            # `runc init` behind, in no list `rm -f` consults); kill it only if it hangs.
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), _CLI_GRACE)
            except (TimeoutError, asyncio.CancelledError):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            raise
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    # -- logs and records ---------------------------------------------------------------------
    async def _follow(self, rep: _Replica) -> None:
        while True:
            try:
                self._forward(rep)
            except OSError as err:
                log.debug("replica/%s log follow: %s", rep.spec.id, err)
            await asyncio.sleep(self.log_poll)

    def _forward(self, rep: _Replica) -> None:
        path = rep.directory / "container.log"
        try:
            size = path.stat().st_size
        except OSError:
            return
        if size < rep.log_offset:
            rep.log_offset = 0  # the engine rotated it
        if size == rep.log_offset:
            return
        with path.open("rb") as f:
            f.seek(rep.log_offset)
            data = f.read(size - rep.log_offset)
        end = data.rfind(b"\n") + 1
        rep.log_offset += end
        for raw in data[:end].splitlines():
            line = _parse_k8s_line(rep.spec.id, raw.decode("utf-8", "replace"))
            if line is not None:
                rep.log_seq += 1
                self.on_log(line.model_copy(update={"seq": rep.log_seq}))

    def _set(self, rep: _Replica, state: ReplicaState, **changes: object) -> None:
        new = rep.status.model_copy(update={"state": state, **changes})
        if new.same_as(rep.status):
            return
        rep.status = new
        self._persist(rep)
        self.on_status(new.model_copy())

    def _persist(self, rep: _Replica) -> None:
        if not rep.directory.is_dir():
            return
        self.records.write(
            rep.directory,
            rep.spec,
            status=rep.status.model_dump(mode="json"),
            log_seq=rep.log_seq,
        )


def _classify(stderr: str, spec: ReplicaSpec) -> _StartFailed:
    text = stderr.strip()
    lowered = text.lower()
    if "executable file not found" in lowered or "command that was not found" in lowered:
        return _StartFailed(
            "CommandNotFound",
            f"command {spec.command or spec.args} is not in image {spec.image!r}: {text}",
        )
    if "image not known" in lowered or "no such image" in lowered:
        return _StartFailed("ImageNotFound", f"image {spec.image!r} is not on the node: {text}")
    return _StartFailed("StartError", text or "the container engine refused to start it")


def _parse_k8s_line(replica_id: str, text: str) -> LogLine | None:
    """One line of the k8s-file log format: ``<RFC3339 time> <stream> <F|P> <line>``."""
    parts = text.split(" ", 3)
    if len(parts) < 3 or parts[1] not in ("stdout", "stderr"):
        return None
    try:
        # the engine writes nanoseconds; datetime keeps microseconds
        when = datetime.fromisoformat(_NANOS.sub(r"\1", parts[0]))
    except ValueError:
        when = utcnow()
    stream = "stdout" if parts[1] == "stdout" else "stderr"
    return LogLine(
        replica_id=replica_id, stream=stream, line=parts[3] if len(parts) > 3 else "", time=when
    )
