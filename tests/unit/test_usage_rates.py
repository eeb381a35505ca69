"""Usage: the rates of two samples, the host's counter files, the control plane's book."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kled.agent import usage
from kled.agent.usage import Running, Sample, UsageMeter, rates, read_cgroup, read_net_dev
from kled.control.usage import UsageBook
from kled.resources.hoststate import (
    Capacity,
    NodeHeartbeat,
    NodeUsage,
    ReplicaState,
    ReplicaStatus,
    ReplicaUsage,
)


def test_two_samples_ten_seconds_apart_give_millicores_and_bytes_per_second() -> None:
    before = Sample(100.0, 2_000_000, 10, rx_bytes=1000, tx_bytes=500, origin="a")
    after = Sample(110.0, 7_000_000, 4096, rx_bytes=21_000, tx_bytes=1500, origin="a")
    usage = rates(before, after)
    assert usage.cpu_millicores == 500  # 5 s of CPU in 10 s
    assert usage.cpu_seconds == 7.0
    assert usage.memory_bytes == 4096
    assert usage.rx_bytes_per_second == 2000.0
    assert usage.tx_bytes_per_second == 100.0


def test_the_first_sample_and_a_restarted_replica_have_no_rate() -> None:
    cur = Sample(110.0, 7_000_000, 4096, origin="pid 2")
    assert rates(None, cur).cpu_millicores is None
    assert rates(Sample(100.0, 1, 1, origin="pid 1"), cur).cpu_millicores is None
    assert rates(Sample(100.0, 9_000_000, 1, origin="pid 2"), cur).cpu_millicores is None
    assert rates(Sample(110.0, 1, 1, origin="pid 2"), cur).cpu_millicores is None  # no time


def test_a_counter_that_went_back_gives_no_network_rate() -> None:
    before = Sample(0.0, 0, 0, rx_bytes=900, tx_bytes=10, origin="a")
    usage = rates(before, Sample(1.0, 0, 0, rx_bytes=100, tx_bytes=20, origin="a"))
    assert usage.rx_bytes_per_second is None
    assert usage.tx_bytes_per_second == 10.0


def test_net_dev_sums_interfaces_but_loopback() -> None:
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n"
        "    lo:  999 1 0 0 0 0 0 0  999 1 0 0 0 0 0 0\n"
        "  eth0: 1200 3 0 0 0 0 0 0  800 2 0 0 0 0 0 0\n"
        "  wg-x:   34 1 0 0 0 0 0 0   66 1 0 0 0 0 0 0\n"
    )
    assert read_net_dev(text) == (1234, 866)


def test_a_cgroup_directory_gives_usage_usec_and_memory_current(tmp_path: Path) -> None:
    (tmp_path / "cpu.stat").write_text("usage_usec 1234567\nuser_usec 1000000\n")
    (tmp_path / "memory.current").write_text("52428800\n")
    assert read_cgroup(tmp_path) == (1234567, 52428800)
    (tmp_path / "memory.current").unlink()
    assert read_cgroup(tmp_path) is None


class _Reader:
    def __init__(self) -> None:
        self.cpu = 0

    def replica(self, pid: int, *, in_pod: bool) -> Sample | None:
        self.cpu += 1_000_000
        return None if pid == 0 else Sample(float(self.cpu), self.cpu, pid, origin=str(pid))

    def node(self) -> Sample:
        return Sample(0.0, 0, 1)


def test_the_meter_measures_once_per_interval() -> None:
    now = [0.0]
    meter = UsageMeter(10.0, reader=_Reader(), clock=lambda: now[0])  # type: ignore[arg-type]
    assert meter.due()
    usage, _ = meter.measure([Running("t.e.a.0", 7, in_pod=False), Running("t.e.a.1", 0, False)])
    assert set(usage) == {"t.e.a.0"}  # the one that vanished is left out
    now[0] = 5.0
    assert not meter.due()
    now[0] = 10.0
    assert meter.due()


def _heartbeat(
    node: str, statuses: list[ReplicaStatus], usage: dict[str, ReplicaUsage] | None
) -> NodeHeartbeat:
    return NodeHeartbeat(
        node=node,
        capacity=Capacity(cpu_millicores=2000, memory_bytes=4 << 30),
        replicas=statuses,
        usage=usage,
        node_usage=NodeUsage(cpu_seconds=9.0, cpu_millicores=500, memory_bytes=1 << 30)
        if usage is not None
        else None,
    )


def _running(rid: str, restarts: int = 0, ready: bool | None = None) -> ReplicaStatus:
    return ReplicaStatus(id=rid, state=ReplicaState.RUNNING, restarts=restarts, ready=ready)


def test_the_book_sums_an_apps_replicas_and_keeps_usage_between_samples() -> None:
    now = [0.0]
    book = UsageBook(stale_after=30, clock=lambda: now[0])
    used = ReplicaUsage(cpu_seconds=3.0, cpu_millicores=250, memory_bytes=100 << 20)
    statuses = [_running("acme.dev.api.0", 1), _running("acme.dev.api.1", 2, ready=False)]
    book.record(_heartbeat("n1", statuses, {"acme.dev.api.0": used, "acme.dev.api.1": used}))
    book.record(_heartbeat("n2", [_running("other.dev.web.0")], {}))
    book.record(_heartbeat("n1", statuses, None))  # between samples: usage kept
    [row] = book.apps("acme")
    assert row["cpuMillicores"] == 500
    assert row["memoryBytes"] == 200 << 20
    assert (row["replicas"], row["ready"], row["restarts"]) == (2, 1, 3)
    assert book.apps("acme", "prod") == []
    [n1, _] = book.nodes()
    assert (n1["cpuPercent"], n1["memoryPercent"]) == (25, 25)
    now[0] = 31.0
    assert book.apps("acme") == [] and book.nodes() == []  # the nodes went silent


def test_a_team_sees_only_its_series_and_no_nodes() -> None:
    book = UsageBook()
    used = ReplicaUsage(cpu_seconds=3.0, memory_bytes=7)
    book.record(_heartbeat("n1", [_running("acme.dev.api.0")], {"acme.dev.api.0": used}))
    book.record(_heartbeat("n2", [_running("other.dev.web.0")], {}))
    mine = book.samples("acme")
    assert [labels["team"] for labels, _ in mine["kled_app_ready_replicas"]] == ["acme"]
    assert mine["kled_app_cpu_seconds_total"][0][1] == 3.0
    assert mine["kled_node_memory_bytes"] == []
    assert len(book.samples()["kled_node_memory_bytes"]) == 2


def test_a_heartbeat_without_usage_is_sent_as_before_and_an_old_one_is_taken() -> None:
    hb = _heartbeat("n1", [], None)
    assert "usage" not in json.loads(hb.model_dump_json())
    assert "node_usage" not in json.loads(hb.model_dump_json())
    old = {"node": "n1", "capacity": {"cpu_millicores": 1, "memory_bytes": 1}}
    assert NodeHeartbeat.model_validate(old).usage is None
    with pytest.raises(ValueError):
        NodeHeartbeat.model_validate(
            {**old, "usage": {"x": {"cpu_seconds": -1, "memory_bytes": 0}}}
        )


def test_a_replica_in_its_own_cgroup_is_read_from_it_and_one_in_the_agents_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tmp_path / "kled" / "acme.dev.api.0"
    own.mkdir(parents=True)
    (own / "cpu.stat").write_text("usage_usec 2500000\n")
    (own / "memory.current").write_text("1048576\n")
    paths = {"self": "/agent.service", os.getpid(): "/kled/acme.dev.api.0", 1: "/agent.service"}
    monkeypatch.setattr(usage, "_cgroup_of", lambda pid: paths.get(pid))
    reader = usage.HostReader(cgroup_root=tmp_path)
    sample = reader.replica(os.getpid(), in_pod=False)
    assert sample is not None
    assert (sample.source, sample.cpu_usec, sample.memory_bytes) == ("cgroup", 2_500_000, 1 << 20)
    paths[os.getpid()] = "/agent.service"  # no cgroup of its own: its process tree
    sample = reader.replica(os.getpid(), in_pod=False)
    assert sample is not None and sample.source == "proc" and sample.memory_bytes > 0
