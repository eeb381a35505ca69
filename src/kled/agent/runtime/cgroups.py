"""Memory and CPU limits for process replicas through cgroup v2, where the host allows.

The agent creates ``<cgroup2 root>/kled/<replica>`` with ``memory.max`` and ``cpu.max``
and moves the replica's process into it before it runs (from the child, between fork and
exec). Hosts without a writable cgroup v2 hierarchy that delegates the memory and cpu
controllers (containers, cgroup v1 or hybrid hosts) run replicas without limits; that is
logged once, not an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from kled.resources.hoststate import ResourceLimits

log = logging.getLogger(__name__)

_PERIOD_US = 100_000


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted, if the host has one."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


class Cgroups:
    """Creates one cgroup per replica under ``kled/`` when the host has cgroup v2."""

    def __init__(self, root: Path | None = None) -> None:
        self.base: Path | None = None
        root = root or cgroup2_root()
        reason = self._setup(root)
        if reason:
            log.info("cgroup limits disabled: %s", reason)

    def _setup(self, root: Path | None) -> str | None:
        if root is None:
            return "no cgroup v2 hierarchy mounted"
        try:
            controllers = set((root / "cgroup.controllers").read_text().split())
        except OSError as err:
            return f"cannot read {root}/cgroup.controllers: {err}"
        missing = {"memory", "cpu"} - controllers
        if missing:
            return f"controllers {sorted(missing)} not available in {root}"
        base = root / "kled"
        try:
            base.mkdir(exist_ok=True)
            (root / "cgroup.subtree_control").write_text("+memory +cpu")
            (base / "cgroup.subtree_control").write_text("+memory +cpu")
        except OSError as err:
            return f"cannot delegate memory/cpu under {base}: {err}"
        self.base = base
        return None

    @property
    def available(self) -> bool:
        return self.base is not None

    def prepare(self, replica_id: str, limits: ResourceLimits) -> Path | None:
        """The cgroup for a replica, limits written; None when limits are not possible."""
        if self.base is None or (limits.memory_bytes is None and limits.cpu_millicores is None):
            return None
        path = self.base / replica_id
        try:
            path.mkdir(exist_ok=True)
            if limits.memory_bytes is not None:
                (path / "memory.max").write_text(str(limits.memory_bytes))
            if limits.cpu_millicores is not None:
                quota = max(1000, limits.cpu_millicores * _PERIOD_US // 1000)
                (path / "cpu.max").write_text(f"{quota} {_PERIOD_US}")
        except OSError as err:
            log.warning("replica/%s: limits not applied: %s", replica_id, err)
            return None
        return path

    def remove(self, replica_id: str) -> None:
        if self.base is not None:
            with contextlib.suppress(OSError):
                (self.base / replica_id).rmdir()


def join_cgroup(path: Path | None) -> None:
    """Called in the child before exec: move itself into ``path``."""
    if path is not None:
        fd = os.open(path / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
