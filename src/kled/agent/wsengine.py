"""A workspace's container on this host: image, volumes, container, lifecycle commands.

The container engine's CLI is the seam, as for replicas (``runtime/container.py``, whose
host flags it shares). Everything a workspace owns carries the label
``kled.workspace=<team>/<name>``: its container ``kled-ws-<team>-<name>``, the images
built for it (``kled-ws/<team>-<name>``), and its named volumes. A devcontainer.json
volume ``cache`` becomes ``kled-ws-<team>-<name>-cache``, so that two workspaces (or two
teams) writing the same name never share one, and deleting the workspace can remove
exactly its own. Volumes outlive the container: stop/start and a rebuild keep them.

Features are installed by a second build on top of the base image: each local feature's
folder is copied in and its ``install.sh`` run with its options as environment, in the
order ``features.resolve_features`` gives, as the reference does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kled.agent.runtime.container import container_engine, engine_flags
from kled.errors import PermanentError, Unavailable
from kled.workspace.devcontainer import ResolvedConfig
from kled.workspace.features import Feature
from kled.workspace.projects import PRELOAD_IMAGE
from kled.workspace.properties import Command, ExecCommand, Mount, ParallelCommands

log = logging.getLogger(__name__)

LABEL = "kled.workspace"
#: which agent made it (a digest of its data dir): an agent touches only its own
OWNER_LABEL = "kled.agent"
#: what a started container runs when ``overrideCommand`` is not false (the reference's)
IDLE = ["/bin/sh", "-c", 'trap "exit 0" TERM; while sleep 1000 & wait $!; do :; done']
PULL_TIMEOUT = 120.0
#: how long a cancelled ``stop`` or ``rm`` is let finish (their own grace is 5 s)
FINISH_SECONDS = 15.0
_SAFE = re.compile(r"[^a-z0-9_.-]")

#: one line of a command's output, and which stream it came on
OutputSink = Callable[[str, str], None]


class EngineError(PermanentError):
    """An engine command failed; its message is one line for the workspace's status."""


@dataclass(frozen=True)
class ContainerInfo:
    running: bool
    created_at: str
    started_at: str
    labels: Mapping[str, str]
    env: Mapping[str, str]


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class WorkspaceEngine:
    """podman (or docker) operations for the workspaces of this host."""

    def __init__(self, owner: str, engine: str | None = None) -> None:
        self.owner = owner
        found = engine or container_engine()
        if found is None:
            raise Unavailable("no container engine (podman or docker) on this host")
        self.engine = found
        self.global_flags, self.run_flags = engine_flags(found)

    @staticmethod
    def container_name(team: str, name: str) -> str:
        return f"kled-ws-{team}-{name}"

    @staticmethod
    def image_name(team: str, name: str) -> str:
        return f"kled-ws/{team}-{name}"

    @staticmethod
    def volume_name(team: str, name: str, volume: str) -> str:
        return f"kled-ws-{team}-{name}-{_SAFE.sub('-', volume.lower())}"

    async def run(
        self,
        *args: str,
        timeout: float | None = None,
        output: OutputSink | None = None,
        env: Mapping[str, str] | None = None,
        finish: bool = False,
    ) -> tuple[int, str]:
        """Run the engine; (exit code, stdout+stderr). ``output`` gets each line as it comes.

        Cancelled (the agent stopping), the engine is killed — unless ``finish``: a
        ``stop`` or ``rm`` killed half-way can leave the container's process running with
        no container record left to remove it by, so those are waited for first."""
        began = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            self.engine,
            *self.global_flags,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
        )
        collected: list[str] = []

        async def pump(stream: asyncio.StreamReader | None, name: str) -> None:
            if stream is None:
                return
            async for raw in stream:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                collected.append(line)
                if output is not None:
                    output(name, line)

        try:
            await asyncio.wait_for(
                asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr")),
                timeout,
            )
            code = await proc.wait()
        except (asyncio.CancelledError, TimeoutError) as stopped:
            cancelled = isinstance(stopped, asyncio.CancelledError)
            if cancelled and finish and proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), FINISH_SECONDS)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        log.debug("%s %s: exit %d in %.3f s", self.engine, args[0], code, time.monotonic() - began)
        return code, "\n".join(collected)

    async def _ok(self, *args: str, what: str, **kw: object) -> str:
        code, out = await self.run(*args, **kw)  # type: ignore[arg-type]
        if code != 0:
            raise EngineError(f"{what}: {_tail(out) or f'exit code {code}'}")
        return out

    def _filters(self, label: str | None) -> list[str]:
        """Engine filters for this agent's things (of one workspace, when ``label``)."""
        own = ["--filter", f"label={OWNER_LABEL}={self.owner}"]
        return [*own, "--filter", f"label={LABEL}" + (f"={label}" if label else "")]

    # ---- images ------------------------------------------------------------------------

    async def ensure_image(self, image: str) -> None:
        """``image`` on this host: already here, else pulled."""
        code, _ = await self.run("image", "exists", image)
        if code == 0:
            return
        if image == PRELOAD_IMAGE:  # made on a node, never pulled
            raise EngineError(
                f"the preload image {image} is not on this node: "
                "run `kled ws image build` there (it takes minutes), then `kled ws up` again"
            )
        try:
            code, out = await self.run("pull", "--quiet", image, timeout=PULL_TIMEOUT)
        except TimeoutError:
            code, out = 1, "timed out"
        if code != 0:
            raise EngineError(
                f"image {image} is not on this node and cannot be pulled: {_tail(out)}"
            )

    async def build(
        self, resolved: ResolvedConfig, tag: str, labels: Mapping[str, str], output: OutputSink
    ) -> None:
        """``build.dockerfile`` of the config, tagged ``tag``."""
        build = resolved.config.build
        dockerfile, context = resolved.dockerfile_path, resolved.build_context
        if build is None or dockerfile is None or context is None:
            raise EngineError("the config has neither image nor build.dockerfile")
        args = ["build", *self.run_flags, "-f", str(dockerfile), "-t", tag]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        for key, value in build.args.items():
            args += ["--build-arg", f"{key}={value}"]
        if build.target:
            args += ["--target", build.target]
        args += [*build.options, str(context)]
        await self._ok(*args, what=f"build of {dockerfile.name} failed", output=output)

    async def install_features(
        self,
        base: str,
        features: Sequence[Feature],
        tag: str,
        labels: Mapping[str, str],
        output: OutputSink,
    ) -> None:
        """``tag``: ``base`` with ``features`` installed in order."""
        with tempfile.TemporaryDirectory(prefix="kled-features-") as tmp:
            lines = [f"FROM {base}", "USER 0"]
            for i, feature in enumerate(features):
                folder = f"f{i}"
                shutil.copytree(feature.path, Path(tmp) / folder)
                env = " ".join(f"{k}={_sh_quote(v)}" for k, v in sorted(feature.env().items()))
                target = f"/tmp/kled-features/{folder}"
                lines.append(f"COPY {folder} {target}")
                lines.append(f"RUN cd {target} && chmod +x install.sh && {env} ./install.sh")
            lines.append("RUN rm -rf /tmp/kled-features")
            user = await self._image_user(base)
            if user:
                lines.append(f"USER {user}")  # the base image's user again, as the reference
            (Path(tmp) / "Dockerfile").write_text("\n".join(lines) + "\n")
            args = ["build", *self.run_flags, "-t", tag]
            for key, value in labels.items():
                args += ["--label", f"{key}={value}"]
            await self._ok(*args, tmp, what="a feature's install.sh failed", output=output)

    async def _image_user(self, image: str) -> str:
        code, out = await self.run("image", "inspect", "--format", "{{.Config.User}}", image)
        return out.strip() if code == 0 else ""

    async def remove_images(self, label: str) -> None:
        code, out = await self.run("images", "-q", *self._filters(label))
        ids = sorted(set(out.split())) if code == 0 else []
        if ids:
            await self.run("rmi", "-f", *ids)

    # ---- volumes and the container -----------------------------------------------------

    async def ensure_volume(self, volume: str, label: str) -> None:
        code, _ = await self.run("volume", "exists", volume)
        if code != 0:
            await self._ok(
                "volume", "create", "--label", f"{LABEL}={label}",
                "--label", f"{OWNER_LABEL}={self.owner}", volume,
                what=f"volume {volume} could not be created",
            )  # fmt: skip

    async def remove_volumes(self, label: str) -> None:
        code, out = await self.run("volume", "ls", "-q", *self._filters(label))
        names = out.split() if code == 0 else []
        if names:
            await self.run("volume", "rm", "-f", *names)

    async def inspect(self, container: str) -> ContainerInfo | None:
        code, out = await self.run("container", "inspect", container)
        if code != 0:
            return None
        try:
            doc = json.loads(out)[0]
        except (ValueError, IndexError):
            return None
        state = doc.get("State") or {}
        config = doc.get("Config") or {}
        env = dict(e.partition("=")[::2] for e in config.get("Env") or [])
        return ContainerInfo(
            running=bool(state.get("Running")),
            created_at=str(doc.get("Created") or ""),
            started_at=str(state.get("StartedAt") or ""),
            labels=dict(config.get("Labels") or {}),
            env=env,
        )

    async def containers(self) -> dict[str, str]:
        """Every workspace container of this host: name → its ``team/name`` label."""
        code, out = await self.run("ps", "-a", *self._filters(None), "--format", "json")
        if code != 0:
            return {}
        try:
            rows = json.loads(out or "[]")
        except ValueError:
            return {}
        found: dict[str, str] = {}
        for row in rows:
            names = row.get("Names") or []
            name = names[0] if isinstance(names, list) and names else str(names)
            label = (row.get("Labels") or {}).get(LABEL)
            if name and label:
                found[name] = str(label)
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
        """``pod``: (namespace path, IP) of the workspace's pod on the team mesh. With
        ``start``, it is started too (one ``run -d``, not ``create`` then ``start``) and
        this returns once it runs, as :meth:`start` does."""
        config = resolved.config
        verb = ["run", "--detach"] if start else ["create"]
        args = [*verb, "--name", container, *self.run_flags]
        if hostname:
            args += ["--hostname", hostname]
        if pod:
            # The pod the network layer built, with the resolver `ip netns exec` gives it:
            # the team gateway, the team's search domain. Its own name is its pod IP.
            netns, ip = pod
            args += ["--network", f"ns:{netns}"]
            if hostname:
                args += ["--add-host", f"{hostname}:{ip}"]
            resolv = Path("/etc/netns", os.path.basename(netns), "resolv.conf")
            if resolv.exists():
                args += ["--volume", f"{resolv}:/etc/resolv.conf:ro"]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        for mount in mounts:
            args += ["--mount", mount.to_arg()]
        args += ["--env-file", str(env_file)]
        if config.container_user:
            args += ["--user", config.container_user]
        if config.init:
            args.append("--init")
        if config.privileged:
            args.append("--privileged")
        for cap in config.cap_add:
            args += ["--cap-add", cap]
        for opt in config.security_opt:
            args += ["--security-opt", opt]
        args += config.run_args
        if config.override_command is not False:
            args += ["--entrypoint", IDLE[0], image, *IDLE[1:]]
        else:
            args.append(image)
        await self._ok(*args, what="the workspace's container could not be created")
        if start:
            info = await self.inspect(container)
            if info is None or not info.running:  # ended already: started again, or why not
                await self.start(container, fresh=True)

    async def start(self, container: str, *, fresh: bool = False) -> None:
        """Start the container and return once it runs. A container stopped a moment ago
        can be ended again by the engine's late cleanup of its previous run: then it is
        started once more. A ``fresh`` one (just created, never run) has no previous run
        to clean up after: once it runs, it is not watched a moment longer."""
        for _ in range(3):
            await self._ok("start", container, what="the workspace's container did not start")
            for _ in range(20):
                info = await self.inspect(container)
                if info is None:
                    raise EngineError("the workspace's container vanished while starting")
                if info.running and fresh:
                    return
                if info.running:
                    await asyncio.sleep(0.2)
                    again = await self.inspect(container)
                    if again is not None and again.running:
                        return
                    break
                await asyncio.sleep(0.1)
        raise EngineError("the workspace's container exits as soon as it starts")

    async def stop(self, container: str) -> None:
        await self.run("stop", "-t", "5", container, finish=True)

    async def remove(self, container: str) -> None:
        await self.run("rm", "-f", "-t", "5", container, finish=True)

    async def exec(
        self,
        container: str,
        argv: Sequence[str],
        *,
        user: str | None,
        workdir: str | None,
        env: Mapping[str, str],
        scratch: Path,
        output: OutputSink | None = None,
    ) -> tuple[int, str]:
        """Run ``argv`` in the container; ``env`` goes through an env file (0600) under
        ``scratch``, never on a command line nor in the engine's own environment."""
        args = ["exec"]
        if user:
            args += ["--user", user]
        if workdir:
            args += ["--workdir", workdir]
        env_file = write_env_file(scratch, env)
        try:
            return await self.run(
                *args, "--env-file", str(env_file), container, *argv, output=output
            )
        finally:
            env_file.unlink(missing_ok=True)


def write_env_file(folder: Path, env: Mapping[str, str], *, name: str | None = None) -> Path:
    """An env file the engine reads (one ``KEY=value`` a line), readable by root only:
    ``name`` in ``folder``, else a new temporary one there."""
    for key, value in env.items():
        if "\n" in value or "\r" in value:
            raise EngineError(f"environment variable {key}: a value cannot span lines here")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, path = tempfile.mkstemp(prefix=".env-", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in sorted(env.items()))
    if name is None:
        return Path(path)
    os.replace(path, folder / name)
    return folder / name


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def argvs(command: Command) -> dict[str, list[str]]:
    """A lifecycle command as the argv lists to run (several run in parallel)."""
    if isinstance(command, ParallelCommands):
        out: dict[str, list[str]] = {}
        for name, part in command.commands.items():
            out[name] = argvs(part)[""]
        return out
    if isinstance(command, ExecCommand):
        return {"": list(command.argv)}
    return {"": ["/bin/sh", "-c", command.script]}
