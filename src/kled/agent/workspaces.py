"""The workspaces of this host: each one made real from its ``WorkspaceOnHost``.

The agent hands every new desired state's ``workspaces`` to :meth:`WorkspaceRunner.want`.
Each workspace has one worker at a time (a serial queue per workspace, workspaces in
parallel), which converges it and reports its phase (``workspacestate``):

- **new, or its spec changed** (source, config path, env): Building — the source is
  fetched (an uploaded archive from the control plane, or a ``git clone`` on this host),
  devcontainer.json read with the core (``kled.workspace``), the image pulled or built,
  local features installed; Starting — volumes, the container, and the lifecycle hooks
  ``lifecycle.plan`` asks for; then Running.
- **stopped** (``running: false``): the container is stopped, volumes and files kept.
- **started again**: the container starts and ``postStartCommand`` runs (create-time hooks
  only if their markers say so).
- **gone from the desired state**: container, images, volumes and files are removed.

A failure is Failed with one line (the failing step, its exit code and last output line);
a hook's failure leaves the container for inspection. A restarted agent adopts running
containers without running any hook again; the spec a container was made from is in its
``kled.spec`` label. Every line a build or hook prints is a log line of the workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

import httpx

from kled.agent import wsenter, wsgitagent, wsidle, wslisten, wslogin
from kled.agent.exec import Target
from kled.agent.runtime.base import ExecPlan
from kled.agent.wsengine import (
    LABEL,
    OWNER_LABEL,
    EngineError,
    WorkspaceEngine,
    argvs,
    write_env_file,
)
from kled.agent.wsprocess import ProcessEngine, check_config, user_name
from kled.aio import wait_event
from kled.errors import KledError, Unavailable
from kled.resources.hoststate import (
    LogLine,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    RuntimeKind,
    utcnow,
)
from kled.resources.workspacestate import WS_TOKEN, WorkspaceOnHost, parse_workspace_id
from kled.workspace import userenv
from kled.workspace.devcontainer import ResolvedConfig, load_config
from kled.workspace.discovery import select_config
from kled.workspace.features import Feature, resolve_features
from kled.workspace.lifecycle import ContainerState, Event, hook_commands, marker_path, plan
from kled.workspace.projects import PRELOAD_IMAGE, preload_config, project_config
from kled.workspace.properties import Mount

log = logging.getLogger(__name__)

StatusSink = Callable[[ReplicaStatus], None]
LogSink = Callable[[LogLine], None]
#: the network label: ``<pod namespace path> <pod IP>`` the container joined ("" for
#: podman's own network); another value makes a new container
NETNS_LABEL = "kled.netns"
#: how long a workspace waits for the network layer to build its pod namespace
NETWORK_WAIT = 120.0
#: how often idle workspaces are looked for (``spec.idleTimeout``)
IDLE_CHECK = 5.0


@dataclass(frozen=True)
class PodPlace:
    """The workspace's pod on the team mesh: its namespace's path, its IP, built yet."""

    netns: str
    ip: str
    ready: bool


#: the workspace's pod, if the host's desired network gives it one (``MeshKeeper.pod_of``)
PodFinder = Callable[[str, str], "PodPlace | None"]
BUILDING = "Building"
SESSION_FILE = "session.json"
SESSION_ENV = "session.env"
#: the workspace's SSH host key, beside its session file (made on the first connection)
SSH_HOST_KEY = "ssh_host_ed25519_key"
#: the index of a workspace's SSH stream in its exec id (``<team>._ws.<name>.ssh``)
SSH_INDEX = "ssh"
#: runArgs that would reach past the workspace's own container into the node
_REFUSED_RUN_ARGS = (
    "-v",
    "--volume",
    "--mount",
    "--privileged",
    "--pid",
    "--ipc",
    "--uts",
    "--userns",
    "--device",
    "--network",
    "--net",
    "--cap-add",
    "--security-opt",
)


class SourceFetcher:
    """Gets an uploaded source archive from the control plane, as this node."""

    def __init__(self, server_url: str, node: str, user: str, password: str) -> None:
        self.server_url = server_url.rstrip("/")
        self.node = node
        self.auth = (user, password)

    async def fetch(self, team: str, digest: str, into: Path) -> None:
        if not self.server_url:
            raise EngineError("this agent does not know its control plane's URL to fetch sources")
        url = f"{self.server_url}/api/v1/nodes/{self.node}/workspace-sources/{team}/{digest}"
        sha = hashlib.sha256()
        tmp = into.with_suffix(".part")
        try:
            async with (
                httpx.AsyncClient(timeout=60) as client,
                client.stream("GET", url, auth=self.auth) as response,
            ):
                if response.status_code != 200:
                    body = (await response.aread()).decode(errors="replace")
                    raise EngineError(f"source archive not served ({response.status_code}): {body}")
                with tmp.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        sha.update(chunk)
                        out.write(chunk)
        except httpx.HTTPError as e:
            raise EngineError(f"source archive could not be fetched: {e}") from e
        if sha.hexdigest() != digest:
            tmp.unlink(missing_ok=True)
            raise EngineError("source archive does not match its digest")
        tmp.replace(into)


def spec_hash(ws: WorkspaceOnHost) -> str:
    """What the container was made from (not running, the idle timeout, the keys)."""
    doc = ws.model_dump(exclude={"running", "idle_timeout", "authorized_keys"})
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


class WorkspaceRunner:
    def __init__(
        self,
        data_dir: Path,
        *,
        fetcher: SourceFetcher | None,
        on_status: StatusSink,
        on_log: LogSink,
        engine: WorkspaceEngine | None = None,
        pods: PodFinder | None = None,
    ) -> None:
        self.root = Path(data_dir) / "workspaces"
        self.pods = pods
        self.owner = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fetcher = fetcher
        self.on_status = on_status
        self.on_log = on_log
        self._engine = engine
        self._process: ProcessEngine | None = None
        self._desired: dict[str, WorkspaceOnHost] | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        #: workspace id → (spec hash, running) of what the worker last finished
        self._done: dict[str, tuple[str, bool, str]] = {}
        self._kick = asyncio.Event()
        self._seq: dict[str, int] = {}
        #: workspace id → the reason it was stopped as idle (until it is started again)
        self._idled: dict[str, str] = {}
        #: workspace id → how many times it came up Running (its direct SSH port follows)
        self._starts: dict[str, int] = {}
        self._ports = wslisten.SshPorts(self._direct_argv, self._pid_of)

    @property
    def engine(self) -> WorkspaceEngine:
        if self._engine is None:
            self._engine = WorkspaceEngine(self.owner)
        return self._engine

    @property
    def process(self) -> ProcessEngine:
        """The engine of ``process`` workspaces (``agent/wsprocess.py``)."""
        if self._process is None:
            self._process = ProcessEngine(self.owner, self.root.parent / "wsprocess")
        return self._process

    def _engine_of(self, provider: str) -> WorkspaceEngine:
        if provider == "process":
            return self.process
        if provider != "container":
            raise EngineError(f"the {provider} provider is not run by this agent")
        return self.engine

    def _engines(self) -> list[WorkspaceEngine]:
        """The engines this host has: podman or docker if installed; process as root."""
        found: list[WorkspaceEngine] = []
        with contextlib.suppress(Unavailable):
            found.append(self.engine)
        if os.geteuid() == 0:
            found.append(self.process)
        return found

    def want(self, workspaces: list[WorkspaceOnHost]) -> None:
        self._desired = {w.id: w for w in workspaces}
        self._kick.set()

    async def run(self) -> None:
        while True:
            await wait_event(self._kick, IDLE_CHECK)
            self._kick.clear()
            try:
                self._stop_idle()
                await self._reconcile()
                await self._ports.sync(self._direct())
            except KledError as e:
                log.warning("workspaces: %s", e)

    def _direct(self) -> dict[str, int]:
        """The workspaces that get a direct SSH port (``wslisten``): Running containers, and
        process workspaces in a pod of their own (else the port would be the node's), with
        users' keys to accept."""
        out: dict[str, int] = {}
        for wid, ws in (self._desired or {}).items():
            if not ws.running or not ws.authorized_keys:
                continue
            if ws.provider != "container" and not (ws.provider == "process" and self._netns(ws)):
                continue
            if wid in self._workers or wid in self._idled or wid not in self._starts:
                continue
            out[wid] = self._starts[wid]
        return out

    async def _pid_of(self, wid: str) -> int:
        ws = (self._desired or {})[wid]
        engine = self._engine_of(ws.provider)
        argv = [engine.engine, *engine.global_flags]
        container = engine.container_name(ws.team, ws.name)
        return await asyncio.to_thread(wsenter.container_pid, argv, container)

    async def _direct_argv(self, wid: str) -> list[str] | None:
        """The SSH server for a direct connection: the allowed users' keys, now."""
        ws = (self._desired or {}).get(wid)
        if ws is None or not ws.authorized_keys or wid not in self._starts:
            return None
        target = await self.exec_target(f"{ws.team}._ws.{ws.name}.{SSH_INDEX}")
        if target is None:
            return None
        argv = target.runtime.exec_plan(target.spec, ["ssh", *ws.authorized_keys]).argv
        return None if argv == ["false"] else argv

    def _stop_idle(self) -> None:
        """Stop the running workspaces unused for their ``idleTimeout`` (``wsidle``)."""
        for wid, ws in (self._desired or {}).items():
            if not ws.running or not ws.idle_timeout or wid in self._workers:
                continue
            if wid in self._idled or self._done.get(wid, ("", False))[1] is not True:
                continue
            reason = wsidle.due(self._folder(ws), ws.idle_timeout)
            if reason is not None:
                self._idled[wid] = reason
                self._start(wid, self._idle_stop(ws, reason))

    async def _idle_stop(self, ws: WorkspaceOnHost, reason: str) -> None:
        engine = self._engine_of(ws.provider)
        self._say(ws, f"stopping: {reason}")
        try:
            await engine.stop(engine.container_name(ws.team, ws.name))
        except (KledError, OSError) as e:
            log.warning("%s: idle stop failed: %s", ws.resource_name, e)
            self._idled.pop(ws.id, None)
            return
        wsidle.mark_stopped(self._folder(ws), reason)
        self._report(ws, ReplicaState.STOPPED, reason=reason)

    async def close(self) -> None:
        await self._ports.close()
        for task in self._workers.values():
            task.cancel()
        for task in list(self._workers.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _reconcile(self) -> None:
        desired = self._desired
        if desired is None:
            return
        for wid, ws in desired.items():
            if wid in self._workers:
                continue
            if self._done.get(wid) == (spec_hash(ws), ws.running, self._netns(ws)):
                continue
            self._start(wid, self._converge(ws))
        existing: dict[str, str] = {}
        for engine in self._engines():
            existing.update(await engine.containers())
        wanted = {f"{w.team}/{w.name}" for w in desired.values()}
        for label in sorted(set(existing.values()) | self._folders()):
            team, _, name = label.partition("/")
            wid = f"{team}._ws.{name}.0"
            if label not in wanted and wid not in self._workers:
                self._start(wid, self._remove(team, name))

    def _folders(self) -> set[str]:
        out: set[str] = set()
        for team in self.root.iterdir() if self.root.is_dir() else ():
            for ws in team.iterdir() if team.is_dir() else ():
                out.add(f"{team.name}/{ws.name}")
        return out

    def _start(self, wid: str, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coro)
        self._workers[wid] = task

        def done(_: asyncio.Task[None]) -> None:
            self._workers.pop(wid, None)
            self._kick.set()  # the desired state may have moved on meanwhile

        task.add_done_callback(done)

    # ---- reporting ---------------------------------------------------------------------

    def _report(self, ws: WorkspaceOnHost, state: ReplicaState, **kw: object) -> None:
        log.info("%s: %s %s", ws.resource_name, state.value, kw.get("reason") or "")
        if state == ReplicaState.RUNNING:
            wsidle.touch(self._folder(ws))  # up or adopted: idle from now
            self._starts[ws.id] = self._starts.get(ws.id, 0) + 1
        else:
            self._starts.pop(ws.id, None)
        self.on_status(ReplicaStatus(id=ws.id, state=state, **kw))  # type: ignore[arg-type]

    def _output(self, ws: WorkspaceOnHost, prefix: str = "") -> Callable[[str, str], None]:
        def emit(stream: str, line: str) -> None:
            seq = self._seq.get(ws.id, 0) + 1
            self._seq[ws.id] = seq
            self.on_log(
                LogLine(
                    replica_id=ws.id,
                    stream="stderr" if stream == "stderr" else "stdout",
                    line=f"{prefix}{line}",
                    seq=seq,
                )
            )

        return emit

    def _say(self, ws: WorkspaceOnHost, line: str) -> None:
        self._output(ws)("stdout", f"[kled] {line}")

    # ---- converging one workspace ------------------------------------------------------

    def _folder(self, ws: WorkspaceOnHost) -> Path:
        return self.root / ws.team / ws.name

    def _netns(self, ws: WorkspaceOnHost) -> str:
        """The pod namespace (and IP) the workspace's container should join ("": none)."""
        place = None if self.pods is None else self.pods(ws.team, ws.id)
        return "" if place is None else f"{place.netns} {place.ip}"

    async def _network_ready(self, ws: WorkspaceOnHost) -> None:
        """Wait until the network layer has built the workspace's pod namespace."""
        loop = asyncio.get_running_loop()
        until = loop.time() + NETWORK_WAIT
        while self.pods is not None:
            place = self.pods(ws.team, ws.id)
            if place is None or place.ready:
                return
            if loop.time() > until:
                raise EngineError(f"its network namespace {place.netns} was not built")
            await asyncio.sleep(0.3)

    async def _converge(self, ws: WorkspaceOnHost) -> None:
        netns = self._netns(ws)
        digest = spec_hash(ws)
        failed = self._folder(ws) / "failed"
        try:
            await self._converge_once(ws, digest, failed)
        except (KledError, OSError) as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("%s: Failed: %s", ws.resource_name, message)
            self._say(ws, f"failed: {message}")
            with contextlib.suppress(OSError):
                failed.parent.mkdir(parents=True, exist_ok=True)
                failed.write_text(json.dumps({"spec": digest, "message": message}))
            self._report(ws, ReplicaState.FAILED, reason="Failed", message=message)
        self._done[ws.id] = (digest, ws.running, netns)

    async def _converge_once(self, ws: WorkspaceOnHost, digest: str, failed: Path) -> None:
        engine = self._engine_of(ws.provider)
        container = engine.container_name(ws.team, ws.name)
        info = await engine.inspect(container)
        if info is not None and info.labels.get("kled.spec") != digest:
            self._say(ws, "the workspace changed: making a new container (volumes kept)")
            await engine.remove(container)
            info = None
        netns = self._netns(ws)
        if info is not None and info.labels.get(NETNS_LABEL, "") != netns:
            self._say(ws, "its network changed: making a new container (volumes kept)")
            await engine.remove(container)
            info = None
        if info is not None and failed.exists():
            with contextlib.suppress(OSError, ValueError):
                old = json.loads(failed.read_text())
                if old.get("spec") == digest:
                    self._report(ws, ReplicaState.FAILED, reason="Failed", message=old["message"])
                    return
        if not ws.running:
            if info is not None and info.running:
                self._say(ws, "stopping")
                await engine.stop(container)
            idled = self._idled.get(ws.id) or wsidle.stopped_reason(self._folder(ws))
            self._report(ws, ReplicaState.STOPPED, reason=idled or "Stopped")
            return
        self._idled.pop(ws.id, None)
        wsidle.clear_stopped(self._folder(ws))
        if info is not None and info.running:
            self._report(ws, ReplicaState.RUNNING, started_at=utcnow())
            return
        failed.unlink(missing_ok=True)
        if info is not None:
            # A stopped container of this spec: start it, run the start-time hooks.
            resolved, features = await self._config(ws)
            # Its markers are read once it runs (``_hooks``), before any hook.
            before = ContainerState(
                exists=True,
                running=False,
                created_at=info.created_at,
                started_at=info.started_at,
            )
            self._report(ws, ReplicaState.STARTING, reason="Starting")
            await self._network_ready(ws)
            await engine.start(container)
            await self._hooks(ws, container, resolved, features, before, Event.START)
            self._report(ws, ReplicaState.RUNNING, started_at=utcnow())
            return
        self._report(ws, ReplicaState.STARTING, reason=BUILDING)
        await self._other_provider_gone(ws)
        await self._source(ws)
        resolved, features = await self._config(ws)
        if ws.provider == "process":
            check_config(resolved, features, lambda line: self._say(ws, line))
            image = ""
        else:
            image = await self._image(ws, resolved, features)
        self._report(ws, ReplicaState.STARTING, reason="Starting")
        await self._network_ready(ws)
        await self._create(ws, container, image, resolved, features, digest)  # and started
        await self._hooks(ws, container, resolved, features, ContainerState(), Event.UP)
        self._report(ws, ReplicaState.RUNNING, started_at=utcnow())

    async def _other_provider_gone(self, ws: WorkspaceOnHost) -> None:
        """A workspace whose provider changed: what the other engine ran it in goes (its
        volumes are that engine's too). The last session file says which one that was."""
        try:
            old = json.loads((self._folder(ws) / SESSION_FILE).read_text()).get("provider")
        except (OSError, ValueError, AttributeError):
            return
        if old in (None, ws.provider) or old not in ("container", "process"):
            return
        try:
            engine = self._engine_of(str(old))
        except KledError:
            return  # not on this node (no engine): nothing of it can be here
        self._say(ws, f"its provider changed from {old}: removing that one and its volumes")
        await engine.remove(engine.container_name(ws.team, ws.name))
        await engine.remove_volumes(f"{ws.team}/{ws.name}")

    async def _source(self, ws: WorkspaceOnHost) -> None:
        folder = self._folder(ws)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._reset(ws, folder)
        src = self._src(ws)
        if ws.upload is not None:
            done = folder / "source.sha256"
            if done.exists() and done.read_text().strip() == ws.upload and src.is_dir():
                return
            if self.fetcher is None:
                raise EngineError("this agent cannot fetch uploaded sources (no control plane URL)")
            self._say(ws, f"fetching the source archive {ws.upload[:12]}")
            archive = folder / "source.tar.gz"
            await self.fetcher.fetch(ws.team, ws.upload, archive)
            if src.exists():
                await asyncio.to_thread(shutil.rmtree, src)
            src.mkdir(parents=True)
            await asyncio.to_thread(_extract, archive, src)
            archive.unlink(missing_ok=True)
            done.write_text(ws.upload + "\n")
        elif ws.git is not None:
            if (src / ".git").is_dir():
                return
            if src.exists():
                await asyncio.to_thread(shutil.rmtree, src)
            src.parent.mkdir(parents=True, exist_ok=True)
            self._say(ws, f"cloning {ws.git}")
            args = ["git", "clone", "--quiet"]
            if ws.ref:
                args += ["--branch", ws.ref]
            env = {"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin"}
            if wsgitagent.is_ssh_url(ws.git):  # the laptop's SSH agent, for the clone only
                env.update(await wsgitagent.clone_env(folder, lambda s: self._say(ws, s)))
            try:
                proc = await asyncio.create_subprocess_exec(
                    *args,
                    "--",
                    ws.git,
                    str(src),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
                out, _ = await proc.communicate()
            finally:
                wsgitagent.clone_done(folder)
            if proc.returncode != 0:
                shutil.rmtree(src, ignore_errors=True)
                why = wsgitagent.clone_error(out.decode(errors="replace"))
                raise EngineError(f"git clone of {ws.git} failed: {why}")
        else:
            raise EngineError("the workspace has no source (spec.source: git or path)")

    def _generated(self, ws: WorkspaceOnHost, config: dict[str, object]) -> Path:
        """A config Kled wrote for a source without one: beside the source, not in it."""
        path = self._folder(ws) / "generated" / "devcontainer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    async def _reset(self, ws: WorkspaceOnHost, folder: Path) -> None:
        """``kled ws up --reset``: the source as fetched or cloned and the volumes go, once
        per reset (the generation done is kept beside them)."""
        done = folder / "reset"
        seen = done.read_text().strip() if done.exists() else ""
        if seen == str(ws.reset):
            return
        if ws.reset:
            self._say(ws, "reset: dropping the workspace's files and volumes")
            src = folder / "src"
            if src.exists():
                await asyncio.to_thread(shutil.rmtree, src)
            (folder / "source.sha256").unlink(missing_ok=True)
            await self._engine_of(ws.provider).remove_volumes(f"{ws.team}/{ws.name}")
        done.write_text(f"{ws.reset}\n")

    def _src(self, ws: WorkspaceOnHost) -> Path:
        basename = ws.folder or (ws.git or "src").rstrip("/").rsplit("/", 1)[-1]
        basename = basename.removesuffix(".git") or "src"
        return self._folder(ws) / "src" / basename

    async def _config(self, ws: WorkspaceOnHost) -> tuple[ResolvedConfig, list[Feature]]:
        src = self._src(ws)
        config = None if ws.project else select_config(src, ws.devcontainer)
        if ws.project:
            self._say(ws, f"no devcontainer.json: the project {ws.project} from its Dockerfile")
            config = self._generated(ws, project_config(src, ws.project))
        elif config is None:
            self._say(ws, f"no devcontainer.json: the preload image {PRELOAD_IMAGE}")
            config = self._generated(ws, preload_config())
        shown = config.relative_to(src).as_posix() if src in config.parents else config.name
        resolved = load_config(src, config, env=ws.local_env, source=shown)
        for warning in resolved.warnings:
            self._say(ws, f"warning: {warning}")
        if ws.git is not None and resolved.config.initialize_command is not None:
            self._say(ws, "initializeCommand is the client's: not run for a git source")
        return resolved, resolve_features(resolved)

    async def _image(
        self, ws: WorkspaceOnHost, resolved: ResolvedConfig, features: list[Feature]
    ) -> str:
        engine = self.engine
        labels = {LABEL: f"{ws.team}/{ws.name}", OWNER_LABEL: self.owner}
        tag = engine.image_name(ws.team, ws.name)
        config = resolved.config
        if config.image:
            self._say(ws, f"image {config.image}")
            await engine.ensure_image(config.image)
            base = config.image
        else:
            self._say(ws, "building the image")
            base = f"{tag}:base"
            await engine.build(resolved, base, labels, self._output(ws))
        if not features:
            return base
        self._say(ws, "installing features: " + ", ".join(f.id for f in features))
        await engine.install_features(base, features, f"{tag}:features", labels, self._output(ws))
        return f"{tag}:features"

    async def _create(
        self,
        ws: WorkspaceOnHost,
        container: str,
        image: str,
        resolved: ResolvedConfig,
        features: list[Feature],
        digest: str,
    ) -> None:
        engine = self._engine_of(ws.provider)
        label = f"{ws.team}/{ws.name}"
        config = resolved.for_container()
        if config.privileged:
            raise EngineError("privileged: true is not allowed for a workspace on a shared node")
        for arg in config.run_args:
            if arg.split("=", 1)[0] in _REFUSED_RUN_ARGS or arg in _REFUSED_RUN_ARGS:
                raise EngineError(f"runArgs: {arg} is not allowed for a workspace on a shared node")
        mounts: list[Mount] = []
        source_mount = resolved.workspace_mount_spec
        if source_mount is not None:
            mounts.append(source_mount)
        for entry in config.mounts:
            mount = entry if isinstance(entry, Mount) else Mount.model_validate(entry)
            if mount.type == "volume" and mount.source:
                volume = engine.volume_name(ws.team, ws.name, mount.source)
                await engine.ensure_volume(volume, label)
                mounts.append(mount.model_copy(update={"source": volume}))
            elif mount.type == "tmpfs" or (mount.type == "volume" and not mount.source):
                mounts.append(mount)
            else:
                raise EngineError(
                    f"mounts: a {mount.type} mount of the node's {mount.source} is not allowed "
                    "(use a volume)"
                )
        env: dict[str, str] = {}
        for feature in features:
            env.update(feature.container_env)
        env.update(config.container_env)
        env.update(ws.env)
        if self.fetcher is not None:  # the kled CLI inside, logged in as its owner
            fetcher = self.fetcher
            login = await wslogin.login_env(
                fetcher.server_url, fetcher.node, fetcher.auth, ws, lambda s: self._say(ws, s)
            )
            env = {**login, **env}
        labels = {
            LABEL: label,
            OWNER_LABEL: self.owner,
            "kled.spec": digest,
            "kled.uid": ws.uid,
            NETNS_LABEL: self._netns(ws),
            **resolved.id_labels,
        }
        env_file = write_env_file(self._folder(ws), env)
        try:
            await engine.create(
                container,
                image,
                labels=labels,
                mounts=mounts,
                env_file=env_file,
                resolved=resolved,
                hostname=ws.name,
                pod=tuple(labels[NETNS_LABEL].split(" ", 1)) if labels[NETNS_LABEL] else None,
                start=True,
            )
        finally:
            env_file.unlink(missing_ok=True)

    # ---- lifecycle hooks ---------------------------------------------------------------

    def _session(
        self, resolved: ResolvedConfig, container_env: dict[str, str]
    ) -> tuple[str | None, dict[str, str]]:
        config = resolved.for_container(container_env)
        env = {k: v for k, v in config.remote_env.items() if v is not None}
        return config.remote_user or config.container_user, env

    async def _probed(
        self,
        engine: WorkspaceEngine,
        container: str,
        resolved: ResolvedConfig,
        container_env: dict[str, str],
        user: str | None,
        remote_env: dict[str, str],
    ) -> dict[str, str]:
        """``remote_env`` on top of what the user's login shell has (``userEnvProbe``);
        a probe that fails or hangs adds nothing, as in the reference."""
        marker = uuid.uuid4().hex
        code, passwd = await engine.exec(
            container, ["cat", "/etc/passwd"], user=None, workdir=None, env={}, scratch=self.root
        )
        shell = userenv.login_shell(passwd if code == 0 else "", user)
        argv = userenv.probe_argv(shell, resolved.config.user_env_probe, marker)
        probed: dict[str, str] = {}
        if argv is not None:
            with contextlib.suppress(TimeoutError):
                code, out = await asyncio.wait_for(
                    engine.exec(
                        container, argv, user=user, workdir=None, env={}, scratch=self.root
                    ),
                    userenv.PROBE_TIMEOUT,
                )
                probed = userenv.parse_probe(out, marker)
        unset = {k for k, v in resolved.config.remote_env.items() if v is None}
        merged = {**userenv.user_env(probed, container_env, user), **remote_env}
        return {k: v for k, v in merged.items() if k not in unset}

    async def _hooks(
        self,
        ws: WorkspaceOnHost,
        container: str,
        resolved: ResolvedConfig,
        features: list[Feature],
        before: ContainerState,
        event: Event,
    ) -> None:
        engine = self._engine_of(ws.provider)
        info = await engine.inspect(container)
        if info is None:
            raise EngineError("the workspace's container vanished")
        user, env = self._session(resolved, dict(info.env))
        if ws.provider == "container":
            env = await self._probed(engine, container, resolved, dict(info.env), user, env)
        if ws.provider == "process":
            user = user_name(user)  # the sandbox's one user, as ``wsprocess`` made it
        workdir = resolved.workspace_folder
        env = wslogin.without_token(env)  # on disk below: the container's env has it
        self._save_session(ws, Session(container, user, workdir, ws.provider))
        write_env_file(self._folder(ws), env, name=SESSION_ENV)
        if before.exists:
            before = ContainerState(
                exists=True,
                running=False,
                created_at=before.created_at,
                started_at=before.started_at,
                markers=await self._read_markers(engine, container, user),
            )
        steps = plan(hook_commands(resolved.config, features), before, event)
        for step in steps:
            if step.where != "container":
                continue
            marker = None
            if step.marker is not None:
                stamp = info.created_at if step.marker == "created" else info.started_at
                marker = self._write_marker(engine, container, user, step.hook, stamp)
            for hook_command in step.commands:
                self._say(ws, f"{step.hook} ({hook_command.origin})")
                runs = argvs(hook_command.command)
                # the step's marker is written beside its first command (one engine call
                # less to wait for): written whether that command succeeds or not, as before
                results = await _gather_after(
                    marker,
                    *(
                        engine.exec(
                            container,
                            argv,
                            user=user,
                            workdir=workdir,
                            env=env,
                            scratch=self._folder(ws),
                            output=self._output(ws),
                        )
                        for argv in runs.values()
                    ),
                )
                marker = None
                for (name, _), (code, out) in zip(runs.items(), results, strict=True):
                    if code != 0:
                        what = f"{step.hook}{'.' + name if name else ''}"
                        last = [line for line in out.splitlines() if line.strip()]
                        tail = f": {last[-1].strip()}" if last else ""
                        raise EngineError(f"{what} exited with code {code}{tail}")
            if marker is not None:  # a step without commands: its marker alone
                await marker

    async def _read_markers(
        self, engine: WorkspaceEngine, container: str, user: str | None
    ) -> dict[str, str]:
        script = (
            "for h in onCreateCommand updateContentCommand postCreateCommand postStartCommand; "
            'do printf "%s=%s\\n" "$h" "$(cat "$HOME/.devcontainer/.${h}Marker" 2>/dev/null)"; '
            "done"
        )
        code, out = await engine.exec(
            container,
            ["/bin/sh", "-c", script],
            user=user,
            workdir=None,
            env={},
            scratch=self.root,
        )
        if code != 0:
            return {}
        found = {}
        for line in out.splitlines():
            hook, _, value = line.partition("=")
            if value:
                found[hook] = value
        return found

    async def _write_marker(
        self, engine: WorkspaceEngine, container: str, user: str | None, hook: str, stamp: str
    ) -> None:
        path = marker_path(hook)
        script = f'mkdir -p "$HOME/.devcontainer" && printf %s "$1" > "$HOME/{path}"'
        await engine.exec(
            container,
            ["/bin/sh", "-c", script, "marker", stamp],
            user=user,
            workdir=None,
            env={},
            scratch=self.root,
        )

    # ---- sessions (``kled ws exec``) ----------------------------------------------------

    def _save_session(self, ws: WorkspaceOnHost, session: Session) -> None:
        path = self._folder(ws) / SESSION_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(session)))
        tmp.replace(path)

    async def exec_target(self, replica_id: str) -> Target | None:
        """The running workspace of that id, as an exec's target; None if there is none.
        ``<team>._ws.<name>.ssh`` is its SSH stream: an SSH server (``wsssh``) on the node."""
        if replica_id.endswith("." + wsgitagent.AGENT_INDEX):
            return wsgitagent.relay_target(self.root, replica_id)
        ssh = replica_id.endswith("." + SSH_INDEX)
        if ssh:
            replica_id = replica_id.removesuffix(SSH_INDEX) + "0"
        parsed = parse_workspace_id(replica_id)
        if parsed is None:
            return None
        folder = self.root / parsed[0] / parsed[1]
        try:
            session = Session(**json.loads((folder / SESSION_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        try:
            engine = self._engine_of(session.provider)
        except KledError:
            return None
        info = await engine.inspect(session.container)
        if info is None or not info.running:
            return None
        planner = SessionPlanner(engine, session, folder / SESSION_ENV)
        spec = ReplicaSpec(
            team=parsed[0], environment=WS_TOKEN, app=parsed[1], index=0,
            runtime=RuntimeKind.PROCESS if ssh else RuntimeKind.CONTAINER,
        )  # fmt: skip
        if ssh:
            return Target(SshPlanner(planner, folder / SSH_HOST_KEY), spec)
        wsidle.touch(folder)  # a session began: the workspace is in use
        return Target(planner, spec)

    # ---- removal -----------------------------------------------------------------------

    async def _remove(self, team: str, name: str) -> None:
        label = f"{team}/{name}"
        log.info("workspace/%s/%s: removing container, images, volumes and files", team, name)
        for engine in self._engines():
            await engine.remove(engine.container_name(team, name))
            await engine.remove_volumes(label)
            await engine.remove_images(label)
        folder = self.root / team / name
        if folder.exists():
            await asyncio.to_thread(shutil.rmtree, folder, True)
        self._done.pop(f"{team}._ws.{name}.0", None)


@dataclass(frozen=True)
class Session:
    """How a session enters a workspace: its container, as remoteUser, in workspaceFolder
    (and with remoteEnv, kept beside it in ``SESSION_ENV``)."""

    container: str
    user: str | None
    workdir: str | None
    #: ``container`` or ``process``: which engine runs it
    provider: str = "container"


class SessionPlanner:
    """An exec in a workspace, as the exec server asks a runtime for one."""

    def __init__(self, engine: WorkspaceEngine, session: Session, env_file: Path) -> None:
        self.engine = engine
        self.session = session
        self.env_file = env_file

    def prefix(self) -> list[str]:
        """``podman exec`` and its options, up to the container's name."""
        argv = [self.engine.engine, *self.engine.global_flags, "exec"]
        if self.session.user:
            argv += ["--user", self.session.user]
        if self.session.workdir:
            argv += ["--workdir", self.session.workdir]
        if self.env_file.exists():
            argv += ["--env-file", str(self.env_file)]
        return argv

    def exec_plan(self, spec: ReplicaSpec, command: list[str]) -> ExecPlan:
        return ExecPlan(argv=[*self.prefix(), self.session.container, *command])


class SshPlanner:
    """The SSH stream of a workspace: ``["ssh", PUBLIC_KEY…]`` runs ``kled.agent.wsssh``
    on the node, which serves one SSH connection on the stream and turns each of its
    sessions into an exec of ``SessionPlanner``'s. Any other command is refused."""

    def __init__(self, sessions: SessionPlanner, host_key: Path) -> None:
        self.sessions = sessions
        self.host_key = host_key

    def exec_plan(self, spec: ReplicaSpec, command: list[str]) -> ExecPlan:
        keys = command[1:]
        if command[:1] != ["ssh"] or not keys or not all(_is_key(k) for k in keys):
            return ExecPlan(argv=["false"])
        plan = {
            "argv": self.sessions.prefix(),
            "container": self.sessions.session.container,
            "host_key": str(self.host_key),
            "keys": keys,
        }
        return ExecPlan(argv=[sys.executable, "-m", "kled.agent.wsssh", json.dumps(plan)])


async def _gather_after(
    first: Coroutine[None, None, None] | None, *runs: Coroutine[None, None, tuple[int, str]]
) -> list[tuple[int, str]]:
    """``runs`` in parallel, and ``first`` beside them; the results of ``runs``."""
    gathered = asyncio.gather(*runs)
    if first is None:
        return list(await gathered)
    _, results = await asyncio.gather(first, gathered)
    return list(results)


def _is_key(text: str) -> bool:
    """An OpenSSH public key line, by its look (the server parses it for real)."""
    words = text.split()
    return len(words) >= 2 and words[0].startswith(("ssh-", "ecdsa-", "sk-"))


def _extract(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(into, filter="data")
