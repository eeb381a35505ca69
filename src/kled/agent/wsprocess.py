"""The ``process`` provider: a workspace without a container engine, as the runner sees it.

:class:`ProcessEngine` answers the runner (``agent/workspaces.py``) as
:class:`~kled.agent.wsengine.WorkspaceEngine` does for podman, under the same names
(``kled-ws-<team>-<name>``), labels and calls, so lifecycle hooks, markers, sessions and
the SSH server work unchanged; the "container" is a sandbox (``agent/wssandbox.py``) whose
state lives under ``<data>/wsprocess/``:

- ``sandboxes/<name>/``: ``state.json`` (what ``create`` was given: user, environment,
  mounts, pod, labels), ``home/`` (the user's home), ``tmp/``, ``init.pid`` while it
  runs. ``remove`` deletes the folder: a new "container" starts with a new home, as a new
  container does.
- ``volumes/<volume>/``: a devcontainer.json volume, a folder owned by the workspace's
  user; it outlives the sandbox (stop/start, ``--recreate``) until the workspace goes.

The commands (``exec``, sessions) are ``python -I -S -c <run wssandbox> --root DIR exec …``
with ``podman exec``'s options: that module's path and options stand where the engine's
binary and global flags stand, so ``SessionPlanner`` and the exec server build them alike.

There are no images: ``image`` and ``build`` do not apply (the node's own tools are the
workspace's), features cannot be installed (they run as root into an image). The user is
``remoteUser`` (else ``containerUser``, else ``dev``), never root: a uid of its own
(``uid_of``), unknown to the node's ``/etc/passwd``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import kled
from kled.agent.runtime.cgroups import Cgroups
from kled.agent.runtime.records import write_private
from kled.agent.wsengine import (
    LABEL,
    OWNER_LABEL,
    ContainerInfo,
    EngineError,
    OutputSink,
    WorkspaceEngine,
)
from kled.agent.wssandbox import SandboxError, read_state, running_pid, sandbox_dir
from kled.resources.hoststate import ResourceLimits
from kled.workspace.devcontainer import ResolvedConfig
from kled.workspace.features import Feature
from kled.workspace.properties import Mount

#: the user of a workspace whose config names none (or root)
DEFAULT_USER = "dev"
#: the uids of process workspaces: far above the node's own users
UID_BASE = 1_500_000
UID_SPAN = 500_000
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

#: ``python -I -S -c`` of this runs ``wssandbox``: no site (and none of the agent's PYTHON*
#: variables) to import for each session and hook, only the folder that holds ``kled``
_LAUNCH = (
    f"import sys; sys.path[:0] = [{str(Path(kled.__file__).resolve().parent.parent)!r}]; "
    "from kled.agent.wssandbox import main; sys.exit(main(sys.argv[1:]))"
)
#: one line to tell the user
Say = Callable[[str], None]


def user_name(config_user: str | None) -> str:
    """The workspace's user: the config's, unless it is root, a number or no valid name."""
    if config_user and config_user != "root" and _USER_NAME.match(config_user):
        return config_user
    return DEFAULT_USER


def uid_of(container: str) -> int:
    """A uid of the workspace's own, the same for every sandbox of it (its volumes' files
    stay its), and none of the node's users'."""
    digest = int(hashlib.sha256(container.encode()).hexdigest()[:8], 16)
    for step in range(UID_SPAN):
        uid = UID_BASE + (digest + step) % UID_SPAN
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise EngineError("no free uid for the workspace's user")


def check_config(resolved: ResolvedConfig, features: Sequence[Feature], say: Say) -> None:
    """What of devcontainer.json does not apply to a process workspace: warned, or refused
    when the workspace would not be what the config asks."""
    config = resolved.config
    if features:
        names = ", ".join(f.id for f in features)
        raise EngineError(
            f"features ({names}) need an image to install into: use --provider container"
        )
    if config.image:
        say(f"warning: image {config.image} is not used by the process provider (the node's are)")
    if config.build is not None:
        say("warning: build is not used by the process provider (no image is built)")
    user = config.remote_user or config.container_user
    if user and user_name(user) != user:
        say(f"warning: a process workspace never runs as {user}; its user is {DEFAULT_USER}")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ProcessEngine(WorkspaceEngine):
    """The workspace engine of the process provider (see the module's doc)."""

    def __init__(self, owner: str, root: Path) -> None:
        self.owner = owner
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.engine = sys.executable
        self.global_flags = ["-I", "-S", "-c", _LAUNCH, "--root", str(self.root)]
        self.run_flags = []
        self._cgroups: Cgroups | None = None

    def _folder(self, container: str) -> Path:
        return sandbox_dir(self.root, container)

    def _volume(self, volume: str) -> Path:
        return self.root / "volumes" / volume

    @property
    def cgroups(self) -> Cgroups:
        if self._cgroups is None:
            self._cgroups = Cgroups()
        return self._cgroups

    # ---- no images -----------------------------------------------------------------------

    async def ensure_image(self, image: str) -> None:
        raise EngineError("the process provider runs no image")

    async def build(
        self, resolved: ResolvedConfig, tag: str, labels: Mapping[str, str], output: OutputSink
    ) -> None:
        raise EngineError("the process provider builds no image")

    async def install_features(
        self,
        base: str,
        features: Sequence[Feature],
        tag: str,
        labels: Mapping[str, str],
        output: OutputSink,
    ) -> None:
        raise EngineError("the process provider installs no features")

    async def remove_images(self, label: str) -> None:
        return None

    # ---- volumes -------------------------------------------------------------------------

    async def ensure_volume(self, volume: str, label: str) -> None:
        folder = self._volume(volume)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        owner = {LABEL: label, OWNER_LABEL: self.owner}
        (folder / "labels.json").write_text(json.dumps(owner))

    def volume_path(self, volume: str) -> Path:
        return self._volume(volume) / "data"

    async def remove_volumes(self, label: str) -> None:
        base = self.root / "volumes"
        for folder in sorted(base.iterdir()) if base.is_dir() else ():
            try:
                labels = json.loads((folder / "labels.json").read_text())
            except (OSError, ValueError):
                continue
            if labels.get(LABEL) == label and labels.get(OWNER_LABEL) == self.owner:
                await asyncio.to_thread(shutil.rmtree, folder, True)

    # ---- the sandbox ---------------------------------------------------------------------

    async def inspect(self, container: str) -> ContainerInfo | None:
        folder = self._folder(container)
        try:
            state = read_state(folder)
        except SandboxError:  # no state: no such workspace
            return None
        running = running_pid(folder) is not None
        try:
            started = (folder / "ready").read_text().strip()
        except OSError:
            started = ""
        return ContainerInfo(
            running=running,
            created_at=str(state.get("created_at") or ""),
            started_at=started,
            labels=dict(state.get("labels") or {}),
            env=dict(state.get("env") or {}),
        )

    async def containers(self) -> dict[str, str]:
        found: dict[str, str] = {}
        base = self.root / "sandboxes"
        for folder in sorted(base.iterdir()) if base.is_dir() else ():
            with contextlib.suppress(SandboxError):
                labels = read_state(folder).get("labels") or {}
                if labels.get(OWNER_LABEL) == self.owner and labels.get(LABEL):
                    found[folder.name] = str(labels[LABEL])
        return found

    async def create(
        self,
        container: str,
        image: str,
        *,
        labels: Mapping[str, str],
        mounts: Sequence[Mount],
        env_file: Path,
        resolved: ResolvedConfig,
        hostname: str | None = None,
        pod: tuple[str, ...] | None = None,
        start: bool = False,
    ) -> None:
        await self._create(container, labels=labels, mounts=mounts, env_file=env_file,
                           resolved=resolved, hostname=hostname, pod=pod)  # fmt: skip
        if start:
            await self.start(container, fresh=True)

    async def _create(
        self,
        container: str,
        *,
        labels: Mapping[str, str],
        mounts: Sequence[Mount],
        env_file: Path,
        resolved: ResolvedConfig,
        hostname: str | None,
        pod: tuple[str, ...] | None,
    ) -> None:
        config = resolved.config
        user = user_name(config.remote_user or config.container_user)
        uid = uid_of(container)
        folder = self._folder(container)
        if folder.exists():
            await self.remove(container)
        folder.mkdir(parents=True, mode=0o700)
        (folder / "home").mkdir(mode=0o750)
        os.chown(folder / "home", uid, uid)
        (folder / "tmp").mkdir()
        os.chmod(folder / "tmp", 0o1777)
        entries: list[dict[str, object]] = []
        for mount in mounts:
            if mount.type == "tmpfs" or (mount.type == "volume" and not mount.source):
                entries.append({"type": "tmpfs", "target": mount.target})
                continue
            if mount.type == "volume" and mount.source:
                source = self.volume_path(mount.source)
                os.chown(source, uid, uid)
            else:
                source = Path(mount.source or "")
                # the source folder, as the user's: they work in it
                await asyncio.to_thread(_chown_tree, source, uid)
            entries.append(
                {"type": "bind", "source": str(source), "target": mount.target,
                 "read_only": mount.read_only}
            )  # fmt: skip
        env = {}
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key:
                env[key] = value
        netns, ip = (pod[0], pod[1]) if pod else ("", "")
        resolv = Path("/etc/netns", os.path.basename(netns), "resolv.conf") if netns else None
        limits = ResourceLimits()
        requirements = config.host_requirements
        if requirements is not None:
            limits = ResourceLimits(
                cpu_millicores=requirements.cpus * 1000 if requirements.cpus else None,
                memory_bytes=requirements.memory_bytes,
            )
        state = {
            "labels": dict(labels),
            "created_at": _now(),
            "hostname": hostname or container,
            "user": user,
            "uid": uid,
            "gid": uid,
            "home": f"/home/{user}",
            "env": env,
            "mounts": entries,
            "netns": netns,
            "ip": ip,
            "resolv": str(resolv) if resolv is not None and resolv.exists() else "",
            "limits": limits.model_dump(),
            "cgroup": "",
        }
        write_private(folder / "state.json", json.dumps(state).encode())  # its env: the token

    async def start(self, container: str, *, fresh: bool = False) -> None:
        folder = self._folder(container)
        if running_pid(folder) is not None:
            return
        # hostRequirements as a cgroup's limits, made at every start (a reboot empties
        # the cgroup tree); none where the node's cgroup v2 is not writable
        state = read_state(folder)
        limits = ResourceLimits.model_validate(state.get("limits") or {})
        cgroup = self.cgroups.prepare(f"ws.{container}", limits)
        if str(cgroup or "") != state.get("cgroup", ""):
            state["cgroup"] = str(cgroup or "")
            write_private(folder / "state.json", json.dumps(state).encode())  # its env: the token
        # a tree that ended without stop (killed, the node rebooted) left these behind
        (folder / "ready").unlink(missing_ok=True)
        (folder / "init.pid").unlink(missing_ok=True)
        with (folder / "init.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                self.engine, *self.global_flags, "init", container,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        until = loop.time() + START_TIMEOUT
        while not (folder / "ready").exists():
            if proc.returncode is not None or loop.time() > until:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                lines = (folder / "init.log").read_text(errors="replace").strip().splitlines()
                raise EngineError(
                    f"the workspace did not start: {lines[-1] if lines else 'no output'}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.05)
        # the launcher lives on as pid 1's parent; nothing of it is awaited after this
        _forget(proc)

    async def stop(self, container: str) -> None:
        folder = self._folder(container)
        pid = running_pid(folder)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
        loop = asyncio.get_running_loop()
        until = loop.time() + STOP_TIMEOUT
        while running_pid(folder) is not None:
            if loop.time() > until:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                until = loop.time() + STOP_TIMEOUT
            await asyncio.sleep(0.05)
        (folder / "ready").unlink(missing_ok=True)
        (folder / "init.pid").unlink(missing_ok=True)

    async def remove(self, container: str) -> None:
        folder = self._folder(container)
        if not folder.exists():
            return
        await self.stop(container)
        with contextlib.suppress(SandboxError):
            if read_state(folder).get("cgroup"):
                self.cgroups.remove(f"ws.{container}")
        await asyncio.to_thread(shutil.rmtree, folder, True)


def _chown_tree(top: Path, uid: int) -> None:
    if not top.exists():
        raise EngineError(f"the source folder {top} is missing")
    os.chown(top, uid, uid, follow_symlinks=False)
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(base, name), uid, uid, follow_symlinks=False)


_launchers: set[asyncio.subprocess.Process] = set()


def _forget(proc: asyncio.subprocess.Process) -> None:
    """Keep the launcher's handle (so asyncio does not warn) until it ends on its own."""
    _launchers.add(proc)

    async def reap() -> None:
        with contextlib.suppress(Exception):
            await proc.wait()
        _launchers.discard(proc)

    task = asyncio.get_running_loop().create_task(reap())
    _reapers.add(task)
    task.add_done_callback(_reapers.discard)


_reapers: set[asyncio.Task[None]] = set()
