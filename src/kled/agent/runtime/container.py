"""The container runtime: replicas as podman (or docker) containers, through the CLI.

The engine's CLI is the seam: no engine library, no socket API. A replica is the container
``kled-<replica id>``; beside it, ``<state_dir>/<replica id>/record.json`` keeps the spec it
was started with (its environment sealed, see ``records``) and its restart count, so a
restarted agent adopts it. The agent
supervises restarts itself (``<engine> wait``, then ``<engine> start`` after a backoff), as
the process runtime does, so both report restarts and exit codes alike. An image that is
neither on the node nor pullable is looked for again with the same capped backoff (the
replica ``Starting``, reason ``ImagePullBackOff``, as kubelet does), so a replica whose
image is built or loaded later starts then, with no restart asked for.

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
from kled.agent.runtime.podvolumes import DEFAULT_ROOT, PodVolumes
from kled.errors import NotFound, Unavailable
from kled.resources.hoststate import (
    ContainerSpec,
    ContainerStatus,
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
#: how many times a replica's container removal is tried before it is left behind
REMOVE_TRIES = 5

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
    #: the pod's sidecars' supervisors, and the read offsets of their (and init
    #: containers') log files
    sidecars: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)


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
        volume_root: Path = DEFAULT_ROOT,
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
        self.volumes = PodVolumes(self.state_dir, volume_root)

    def exec_plan(self, spec: ReplicaSpec, command: builtins.list[str]) -> ExecPlan:
        """``podman exec`` of ``command`` in the replica's container."""
        name = self.container_name(spec.id)
        return ExecPlan(argv=[self.engine, *self.global_flags, "exec", name, *command])

    def exec_plan_in(self, spec: ReplicaSpec, container: str, command: list[str]) -> ExecPlan:
        """``podman exec`` of ``command`` in sidecar ``container`` of the replica's pod."""
        if container not in {c.name for c in spec.sidecars}:
            names = ", ".join(c.name for c in spec.sidecars) or "none"
            raise NotFound(f"replica {spec.id} has no sidecar {container!r} (sidecars: {names})")
        name = self.container_name(spec.id, container)
        return ExecPlan(argv=[self.engine, *self.global_flags, "exec", name, *command])

    @staticmethod
    def container_name(replica_id: str, container: str | None = None) -> str:
        """The replica's own container, or one of its pod's other containers."""
        return f"kled-{replica_id}" if container is None else f"kled-{replica_id}--{container}"

    # -- the Runtime protocol ---------------------------------------------------------------
    async def start(self, spec: ReplicaSpec) -> ReplicaStatus:
        rep = self._replicas.get(spec.id)
        if rep is not None and rep.spec == spec:
            return rep.status.model_copy()
        if rep is not None and await self.update_files(spec):
            return rep.status.model_copy()
        if rep is not None:
            await self.stop(spec.id)
        directory = self.records.folder(spec.id)
        status = ReplicaStatus(
            id=spec.id,
            state=ReplicaState.STARTING,
            generation=spec.generation,
            containers={c.name: ContainerStatus() for c in spec.sidecars},
        )
        rep = _Replica(spec=spec, directory=directory, status=status)
        self._replicas[spec.id] = rep
        self._persist(rep)
        rep.supervisor = asyncio.create_task(self._supervise(rep, adopted=False))
        rep.follower = asyncio.create_task(self._follow(rep))
        await rep.first_attempt.wait()
        return rep.status.model_copy()

    async def update_files(self, spec: ReplicaSpec) -> bool:
        """When ``spec`` differs from the running replica's only in the files of its config
        and secret volumes: write them in place (no restart) and say so."""
        rep = self._replicas.get(spec.id)
        if rep is None or not _only_files_differ(rep.spec, spec):
            return False
        try:
            self.volumes.update(spec)
        except OSError as err:
            log.warning("replica/%s volume files not updated: %s", spec.id, err)
            return False
        rep.spec = spec
        self._persist(rep)
        log.info("replica/%s volume files updated in place", spec.id)
        return True

    async def stop(self, replica_id: str) -> None:
        rep = self._replicas.get(replica_id)
        if rep is None:
            return
        for task in (rep.supervisor, *rep.sidecars.values()):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Listed (as the node reports it) until its containers are gone.
        others = [*rep.spec.init_containers, *rep.spec.sidecars]
        grace = round(grace_of(rep.spec, self.stop_grace))
        # All at once, one command each (each may take the grace period, and podman 4's
        # `rm -f A B` removes nothing when A does not exist); a sidecar that shares the
        # network of the replica's container (no pod namespace) depends on it: podman
        # removes it with it (--depend)
        depend = ["--depend"] if others and os.path.basename(self.engine) == "podman" else []
        removals = [self._remove(self.container_name(replica_id), grace, *depend)]
        for c in others:
            removals.append(self._remove(self.container_name(replica_id, c.name), grace))
        await asyncio.gather(*removals)
        self.volumes.remove(replica_id)
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
            for other in [*rep.spec.init_containers, *rep.spec.sidecars]:
                with contextlib.suppress(OSError):
                    rep.offsets[other.name] = self._logfile(rep, other.name).stat().st_size
            if rep.status.state in (ReplicaState.RUNNING, ReplicaState.STARTING):
                rep.supervisor = asyncio.create_task(self._supervise(rep, adopted=True))
                rep.follower = asyncio.create_task(self._follow(rep))
                self._start_sidecars(rep, adopted=True)
        return adopted

    async def detach(self) -> None:
        for rep in self._replicas.values():
            for task in (rep.supervisor, rep.follower, *rep.sidecars.values()):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._persist(rep)
        self._replicas.clear()

    # -- supervision ---------------------------------------------------------------------------
    async def _supervise(self, rep: _Replica, *, adopted: bool) -> None:
        failures = pulls = 0
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
                        if not await self._init(rep):
                            return
                        await self._run(rep)
                        adopted = True  # from now on the container exists
                        self._start_sidecars(rep, adopted=False)
                except _StartFailed as err:
                    if err.reason == "ImageNotFound":  # it may arrive: tried again, as kubelet
                        delay = min(self.backoff_base * float(2**pulls), self.backoff_cap)
                        pulls += 1
                        again = f"{err.message}; trying again in {delay:.0f}s"
                        self._set(rep, ReplicaState.STARTING, pid=None,
                                  reason="ImagePullBackOff", message=again)  # fmt: skip
                        rep.first_attempt.set()
                        await asyncio.sleep(delay)
                        continue
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
        main = ContainerSpec(
            name="", image=spec.image, command=spec.command, args=spec.args,
            working_dir=spec.working_dir, env=spec.env, resources=spec.resources,
            mounts=spec.mounts,
        )  # fmt: skip
        ports = tuple(f"{p.target_port or p.port}/{p.protocol.lower()}" for p in spec.ports)
        await self._launch(rep, main, None, ports=ports)

    async def _launch(
        self, rep: _Replica, c: ContainerSpec, container: str | None, ports: tuple[str, ...] = ()
    ) -> None:
        """``<engine> run -d`` of one container of the replica's pod: its own (``container``
        None) or another, which joins the pod's network namespace (or, without one, the
        network of the replica's own container)."""
        spec = rep.spec
        await self._ensure_image(c.image)
        name = self.container_name(spec.id, container)
        await self._cli("rm", "-f", name)
        logfile = self._logfile(rep, container)
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
        elif container in {s.name for s in spec.sidecars}:  # init containers run before it
            args += ["--network", f"container:{self.container_name(spec.id)}"]
        args += self.volumes.mount_args(spec, c.mounts)
        env_file = rep.directory / (f"run-{container}.env" if container else "run.env")
        lines, engine_env = [], {}
        for key, value in sorted(c.env.items()):
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
        for port in ports:
            args += ["--expose", port]
        if c.resources.memory_bytes:
            args += ["--memory", str(c.resources.memory_bytes)]
        if c.resources.cpu_millicores:
            args += ["--cpus", f"{c.resources.cpu_millicores / 1000:.3f}"]
        if c.working_dir:
            args += ["--workdir", c.working_dir]
        if c.command:
            args += ["--entrypoint", json.dumps(c.command)]
        args += [c.image, *c.args]
        try:
            rc, _, err = await self._cli(*args, env=engine_env)
        finally:
            env_file.unlink(missing_ok=True)
        if rc != 0:
            raise _classify(err, c.command, c.args, c.image)
        log.info("replica/%s container %s started image=%s", spec.id, name, c.image)

    def _logfile(self, rep: _Replica, container: str | None) -> Path:
        return rep.directory / (f"container-{container}.log" if container else "container.log")

    async def _init(self, rep: _Replica) -> bool:
        """Run the pod's volumes into place and its init containers to completion, in
        order; False (the replica Failed) when one cannot run or fails under restart
        policy Never. A failing one is run again after a backoff, as Kubernetes does."""
        try:
            self.volumes.prepare(rep.spec)
        except (OSError, ValueError) as err:
            self._set(rep, ReplicaState.FAILED, pid=None, reason="NoMemoryVolumes",
                      message=f"the pod's volumes cannot be made: {err}")  # fmt: skip
            rep.first_attempt.set()
            return False
        for c in rep.spec.init_containers:
            failures = 0
            while True:
                self._set(rep, ReplicaState.STARTING, reason="PodInitializing",
                          message=f"init container {c.name}")  # fmt: skip
                try:
                    await self._launch(rep, c, c.name)
                except _StartFailed as err:
                    self._set(rep, ReplicaState.FAILED, pid=None, reason=err.reason,
                              message=f"init container {c.name}: {err.message}")  # fmt: skip
                    rep.first_attempt.set()
                    return False
                code = await self._wait(self.container_name(rep.spec.id, c.name))
                await self._cli("rm", "-f", self.container_name(rep.spec.id, c.name))
                if code == 0:
                    break
                what = f"init container {c.name} exited with code {code}"
                if rep.spec.restart_policy == RestartPolicy.NEVER:
                    self._set(rep, ReplicaState.FAILED, pid=None, last_exit_code=code,
                              reason="Init:Error", message=what)  # fmt: skip
                    rep.first_attempt.set()
                    return False
                delay = min(self.backoff_base * float(2**failures), self.backoff_cap)
                self._set(rep, ReplicaState.STARTING, last_exit_code=code,
                          reason="Init:CrashLoopBackOff",
                          message=f"{what}; again in {delay:.1f}s")  # fmt: skip
                rep.first_attempt.set()
                failures += 1
                await asyncio.sleep(delay)
        return True

    def _start_sidecars(self, rep: _Replica, *, adopted: bool) -> None:
        for c in rep.spec.sidecars:
            task = rep.sidecars.get(c.name)
            if task is None or task.done():
                rep.sidecars[c.name] = asyncio.create_task(self._sidecar(rep, c, adopted=adopted))

    async def _sidecar(self, rep: _Replica, c: ContainerSpec, *, adopted: bool) -> None:
        """Run and supervise one sidecar: restarted per the replica's restart policy, with
        the same backoff as the replica's own container, its restarts counted apart."""
        name = self.container_name(rep.spec.id, c.name)
        failures = 0
        running = False
        if adopted:
            state = await self._state(name)
            running = state is not None and state["Status"] == "running"
            adopted = state is not None
        while True:
            if not running:
                try:
                    if adopted:
                        await self._restart_existing(name)
                    else:
                        await self._launch(rep, c, c.name)
                        adopted = True
                except _StartFailed as err:
                    log.warning("replica/%s sidecar %s: %s", rep.spec.id, c.name, err.message)
                    self._set_container(rep, c.name, running=False)
                    failures += 1
                    await asyncio.sleep(min(self.backoff_base * 2.0**failures, self.backoff_cap))
                    continue
            running = False
            self._set_container(rep, c.name, running=True)
            started = time.monotonic()
            code = await self._wait(name)
            if time.monotonic() - started >= self.stable_after:
                failures = 0
            self._set_container(rep, c.name, running=False, last_exit_code=code)
            policy = rep.spec.restart_policy
            if policy == RestartPolicy.NEVER or (policy == RestartPolicy.ON_FAILURE and code == 0):
                return
            await asyncio.sleep(min(self.backoff_base * float(2**failures), self.backoff_cap))
            failures += 1
            now = rep.status.containers.get(c.name) or ContainerStatus()
            self._set_container(rep, c.name, restarts=now.restarts + 1)

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

    async def _remove(self, name: str, grace: int, *flags: str) -> None:
        """``rm -f`` of a container, again while it fails and the container is still
        there (a busy podman can fail a removal, "did not die within timeout"): the
        replica stays listed, and its app's deletion unfinished, until it is gone."""
        for attempt in range(REMOVE_TRIES):
            rc, _, err = await self._cli("rm", "-f", "-t", str(grace), *flags, name)
            if rc == 0 or await self._state(name) is None:
                return
            log.warning("container %s not removed (%s); trying again", name, err.strip())
            await asyncio.sleep(0.5 * (attempt + 1))
        log.error("container %s not removed after %d tries; left behind", name, REMOVE_TRIES)

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
        rep.log_offset = self._forward_file(rep, None, rep.log_offset)
        for c in [*rep.spec.init_containers, *rep.spec.sidecars]:
            rep.offsets[c.name] = self._forward_file(rep, c.name, rep.offsets.get(c.name, 0))

    def _forward_file(self, rep: _Replica, container: str | None, offset: int) -> int:
        """Hand on the new lines of one container's log file; the new offset."""
        path = self._logfile(rep, container)
        try:
            size = path.stat().st_size
        except OSError:
            return offset
        if size < offset:
            offset = 0  # the engine rotated it
        if size == offset:
            return offset
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(size - offset)
        end = data.rfind(b"\n") + 1
        for raw in data[:end].splitlines():
            line = _parse_k8s_line(rep.spec.id, raw.decode("utf-8", "replace"))
            if line is not None:
                rep.log_seq += 1
                self.on_log(line.model_copy(update={"seq": rep.log_seq, "container": container}))
        return offset + end

    def _set(self, rep: _Replica, state: ReplicaState, **changes: object) -> None:
        new = rep.status.model_copy(update={"state": state, **changes})
        if new.same_as(rep.status):
            return
        rep.status = new
        self._persist(rep)
        self.on_status(new.model_copy())

    def _set_container(self, rep: _Replica, name: str, **changes: object) -> None:
        """A sidecar's status changed: the replica's status says so."""
        now = rep.status.containers.get(name) or ContainerStatus()
        containers = {**rep.status.containers, name: now.model_copy(update=changes)}
        new = rep.status.model_copy(update={"containers": containers})
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


def _only_files_differ(a: ReplicaSpec, b: ReplicaSpec) -> bool:
    """Whether two specs differ in nothing but the files of config and secret volumes."""

    def shape(spec: ReplicaSpec) -> ReplicaSpec:
        volumes = [v.model_copy(update={"files": []}) for v in spec.volumes]
        return spec.model_copy(update={"volumes": volumes})

    return bool(a.volumes) and shape(a) == shape(b)


def _classify(stderr: str, command: list[str], args: list[str], image: str) -> _StartFailed:
    text = stderr.strip()
    lowered = text.lower()
    if "executable file not found" in lowered or "command that was not found" in lowered:
        return _StartFailed(
            "CommandNotFound",
            f"command {command or args} is not in image {image!r}: {text}",
        )
    if "image not known" in lowered or "no such image" in lowered:
        return _StartFailed("ImageNotFound", f"image {image!r} is not on the node: {text}")
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
