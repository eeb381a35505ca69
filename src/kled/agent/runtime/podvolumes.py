"""The volumes of a container replica's pod, on the node.

Every volume of a replica lives in one folder of its own under a memory-backed root (a
tmpfs: ``/dev/shm`` by default), so the files of a ``secret`` volume are never written to
the node's disk in clear, as ``docs/security.md`` requires of decrypted Secrets: the root
is checked to be a tmpfs before any file is written, and a replica whose volumes have no
tmpfs to go to fails to start (``NoMemoryVolumes``). The folder of the runtime is 0700
(the engine, as root, bind-mounts what is inside); a volume's own folder is 0755 and an
``emptyDir`` 0777, as Kubernetes makes them, so a container's non-root user can use it.
It is removed with the replica.

A ``config`` or ``secret`` volume's files are rewritten in place when the desired state
changes only them (each file replaced atomically): containers that mount the volume (not a
``subPath`` of it) see the new contents without a restart, as in Kubernetes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from kled.agent.runtime import records
from kled.resources.hoststate import MountSpec, ReplicaSpec, VolumeSpec

DEFAULT_ROOT = Path("/dev/shm")


def is_tmpfs(path: Path) -> bool:
    """Whether ``path`` is on a memory-backed file system (tmpfs or ramfs)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    real = os.path.realpath(path)
    best, kind = "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind in ("tmpfs", "ramfs")


class PodVolumes:
    """The volume folders of one runtime's replicas, under ``root`` (a tmpfs)."""

    def __init__(self, state_dir: Path, root: Path = DEFAULT_ROOT) -> None:
        # one folder per runtime: agents of several nodes may share a host
        digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
        self.root = root
        self.base = root / f"kled-pods-{digest}"

    def folder(self, replica_id: str) -> Path:
        return self.base / replica_id

    def prepare(self, spec: ReplicaSpec) -> None:
        """Make the replica's volumes (fresh emptyDirs, current files); OSError, or
        ValueError when the root is not a tmpfs."""
        if not spec.volumes:
            return
        if not is_tmpfs(self.root):
            raise ValueError(f"{self.root} is not a tmpfs: Secret files are kept in memory only")
        records.private_dir(self.base)
        pod = self.folder(spec.id)
        shutil.rmtree(pod, ignore_errors=True)
        records.private_dir(pod)
        for volume in spec.volumes:
            path = pod / volume.name
            path.mkdir(mode=0o777 if volume.kind == "emptyDir" else 0o755)
            os.chmod(path, 0o777 if volume.kind == "emptyDir" else 0o755)
            self._write(path, volume)

    def update(self, spec: ReplicaSpec) -> None:
        """Rewrite the files of the replica's config and secret volumes in place."""
        pod = self.folder(spec.id)
        for volume in spec.volumes:
            if volume.kind != "emptyDir" and (pod / volume.name).is_dir():
                self._write(pod / volume.name, volume)

    def remove(self, replica_id: str) -> None:
        shutil.rmtree(self.folder(replica_id), ignore_errors=True)
        with contextlib.suppress(OSError):
            self.base.rmdir()  # the last replica with volumes is gone

    def mount_args(self, spec: ReplicaSpec, mounts: list[MountSpec]) -> list[str]:
        """The engine's ``--volume`` flags for ``mounts`` of the replica's volumes."""
        args: list[str] = []
        pod = self.folder(spec.id)
        for mount in mounts:
            source = pod / mount.volume
            if mount.sub_path:
                source = source / mount.sub_path
                if not source.exists():  # as Kubernetes does: a missing subPath is a folder
                    source.mkdir(parents=True, mode=0o777)
            args += ["--volume", f"{source}:{mount.path}" + (":ro" if mount.read_only else "")]
        return args

    @staticmethod
    def _write(folder: Path, volume: VolumeSpec) -> None:
        wanted = set()
        for item in volume.files:
            path = folder / item.path
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            tmp = path.with_name(f".{path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, item.mode)
                os.write(fd, base64.b64decode(item.data))
            finally:
                os.close(fd)
            os.replace(tmp, path)
            wanted.add(path)
        for path in sorted(folder.rglob("*"), reverse=True):
            if path.is_file() and path not in wanted:
                path.unlink(missing_ok=True)
