"""What each replica, and the host, uses: CPU, memory and network bytes, sampled.

The agent reads a replica's counters where the kernel keeps them for it alone: the cgroup v2
the replica's main process is in (``cpu.stat`` ``usage_usec``, ``memory.current``) when that
cgroup is its own — a process replica with limits (``runtime/cgroups.py``) or a podman
container (``libpod-….scope``) — else the sum over its process tree from ``/proc`` (a process
replica on a host without a writable cgroup v2). Network bytes come from ``/proc/<pid>/net/dev``,
which shows the namespace the process is in: counted only when that is a pod namespace, not
the host's.

A sample is a point in time; :func:`rates` turns two samples into what is reported (pure, so
it is tested without a host). :class:`UsageMeter` keeps the previous sample per replica and
measures at most once per interval, so heartbeats carry usage every 10 s, not every 2 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from kled.agent.runtime.cgroups import cgroup2_root
from kled.resources.hoststate import NodeUsage, ReplicaUsage

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """Counters of one replica (or the host) at monotonic time ``at``."""

    at: float
    cpu_usec: int
    memory_bytes: int
    rx_bytes: int | None = None
    tx_bytes: int | None = None
    source: str = "proc"
    #: what the counters belong to (a cgroup path, or the main pid): a change resets them
    origin: str = ""


def _per_second(before: int | None, after: int | None, seconds: float) -> float | None:
    if before is None or after is None or after < before:
        return None
    return (after - before) / seconds


def rates(prev: Sample | None, cur: Sample) -> ReplicaUsage:
    """The usage to report from the sample before (None: the first) and the current one.

    Rates need two samples of the same counters, some time apart; a replica that restarted
    (other origin, or a counter that went backwards) starts over with no rate."""
    usable = (
        prev is not None
        and prev.origin == cur.origin
        and cur.at > prev.at
        and cur.cpu_usec >= prev.cpu_usec
    )
    millicores: int | None = None
    rx_rate = tx_rate = None
    if usable:
        assert prev is not None
        seconds = cur.at - prev.at
        millicores = round((cur.cpu_usec - prev.cpu_usec) / 1000 / seconds)
        rx_rate = _per_second(prev.rx_bytes, cur.rx_bytes, seconds)
        tx_rate = _per_second(prev.tx_bytes, cur.tx_bytes, seconds)
    return ReplicaUsage(
        cpu_seconds=cur.cpu_usec / 1_000_000,
        cpu_millicores=millicores,
        memory_bytes=cur.memory_bytes,
        rx_bytes=cur.rx_bytes,
        tx_bytes=cur.tx_bytes,
        rx_bytes_per_second=rx_rate,
        tx_bytes_per_second=tx_rate,
        source="cgroup" if cur.source == "cgroup" else "proc",
    )


def node_rates(prev: Sample | None, cur: Sample) -> NodeUsage:
    usage = rates(prev, cur)
    return NodeUsage(
        cpu_seconds=usage.cpu_seconds,
        cpu_millicores=usage.cpu_millicores,
        memory_bytes=usage.memory_bytes,
    )


# ---- reading the host ------------------------------------------------------------------


def _cgroup_of(pid: int | str) -> str | None:
    """The v2 path (``0::/x/y``) of a process, from ``/proc/<pid>/cgroup``."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None


def read_cgroup(directory: Path) -> tuple[int, int] | None:
    """(usage_usec, memory.current) of a cgroup v2 directory; None if it has not both."""
    try:
        stat = (directory / "cpu.stat").read_text()
        memory = int((directory / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    for line in stat.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec" and value.strip().isdigit():
            return int(value), memory
    return None


def read_net_dev(text: str) -> tuple[int, int]:
    """(rx, tx) bytes summed over the interfaces of a ``/proc/net/dev`` text, ``lo`` excepted."""
    rx = tx = 0
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


def _netns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


class HostReader:
    """Reads samples off this host; the only part of this module that touches it."""

    def __init__(self, cgroup_root: Path | None = None) -> None:
        self.cgroup_root = cgroup_root or cgroup2_root()
        self._own_cgroup = _cgroup_of("self")
        self._host_netns = _netns_inode("self")

    def replica(self, pid: int, *, in_pod: bool) -> Sample | None:
        """A sample of the replica whose main process is ``pid``; None if it is gone."""
        now = time.monotonic()
        sample = self._from_cgroup(pid, now) or self._from_proc(pid, now)
        if sample is None:
            return None
        if in_pod and _netns_inode(pid) not in (None, self._host_netns):
            try:
                rx, tx = read_net_dev(Path(f"/proc/{pid}/net/dev").read_text())
            except (OSError, ValueError):
                return sample
            return Sample(
                sample.at, sample.cpu_usec, sample.memory_bytes, rx, tx,
                sample.source, sample.origin,
            )  # fmt: skip
        return sample

    def _from_cgroup(self, pid: int, now: float) -> Sample | None:
        path = _cgroup_of(pid)
        # The agent's own cgroup (or the root) is not the replica's alone.
        if self.cgroup_root is None or not path or path in ("/", self._own_cgroup):
            return None
        counters = read_cgroup(self.cgroup_root / path.lstrip("/"))
        if counters is None:
            return None
        return Sample(now, counters[0], counters[1], source="cgroup", origin=path)

    def _from_proc(self, pid: int, now: float) -> Sample | None:
        try:
            main = psutil.Process(pid)
            procs = [main, *main.children(recursive=True)]
            started = main.create_time()
        except psutil.Error:
            return None
        cpu = 0.0
        rss = 0
        for proc in procs:
            try:
                times = proc.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
                rss += proc.memory_info().rss
            except psutil.Error:
                continue  # exited meanwhile
        return Sample(now, int(cpu * 1_000_000), rss, origin=f"{pid}@{started}")

    def node(self) -> Sample:
        now = time.monotonic()
        cpu = psutil.cpu_times()
        busy = cpu.user + cpu.nice + cpu.system + getattr(cpu, "irq", 0.0)
        busy += getattr(cpu, "softirq", 0.0) + getattr(cpu, "steal", 0.0)
        memory = psutil.virtual_memory()
        return Sample(now, int(busy * 1_000_000), memory.total - memory.available, origin="node")


@dataclass(frozen=True)
class Running:
    """What the meter needs to know of a running replica."""

    id: str
    pid: int
    in_pod: bool


class UsageMeter:
    """Measures replicas and the host at most once per ``interval`` seconds."""

    def __init__(
        self,
        interval: float = 10.0,
        reader: HostReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.reader = reader or HostReader()
        self._clock = clock
        self._last: float | None = None
        self._samples: dict[str, Sample] = {}
        self._node: Sample | None = None

    def due(self) -> bool:
        return self._last is None or self._clock() - self._last >= self.interval

    def measure(self, running: Iterable[Running]) -> tuple[dict[str, ReplicaUsage], NodeUsage]:
        """Usage of every running replica (those that vanished meanwhile left out)."""
        self._last = self._clock()
        usage: dict[str, ReplicaUsage] = {}
        samples: dict[str, Sample] = {}
        for rep in running:
            sample = self.reader.replica(rep.pid, in_pod=rep.in_pod)
            if sample is None:
                continue
            usage[rep.id] = rates(self._samples.get(rep.id), sample)
            samples[rep.id] = sample
        self._samples = samples
        node = self.reader.node()
        node_usage = node_rates(self._node, node)
        self._node = node
        return usage, node_usage
