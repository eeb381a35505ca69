"""The latest usage of every replica and node, kept in memory from the agents' heartbeats.

Usage changes every sample and is worth nothing once old, so it is never written to the
store: a heartbeat replaces its node's entry here, and ``kled top``, ``/metrics`` read it.
A control plane that restarts knows nothing until the next sample (10 s). A node that
stops heartbeating drops out after ``stale_after`` seconds, as ``kubectl top`` shows no
metrics for a node whose kubelet is gone.

Pure: no I/O, the clock passed in; ``api/usage.py`` is the shell that serves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kled.resources.hoststate import (
    Capacity,
    NodeHeartbeat,
    NodeUsage,
    ReplicaState,
    ReplicaStatus,
    ReplicaUsage,
    TeamMeshReport,
)

#: the Prometheus families this book serves: name → (type, help)
FAMILIES: dict[str, tuple[str, str]] = {
    "kled_app_cpu_seconds_total": ("counter", "CPU time used by an app's replica"),
    "kled_app_memory_bytes": ("gauge", "Memory used by an app's replica"),
    "kled_app_restarts_total": ("counter", "Restarts of an app's replica by its agent"),
    "kled_app_network_receive_bytes_total": ("counter", "Bytes received by a replica's pod"),
    "kled_app_network_transmit_bytes_total": ("counter", "Bytes sent by a replica's pod"),
    "kled_app_ready_replicas": ("gauge", "Replicas of an app that are ready to serve"),
    "kled_service_cpu_seconds_total": ("counter", "CPU time used by a managed service's server"),
    "kled_service_memory_bytes": ("gauge", "Memory used by a managed service's server"),
    "kled_service_restarts_total": ("counter", "Restarts of a managed service's server"),
    "kled_service_ready": ("gauge", "1 when a managed service's server passes its health check"),
    "kled_node_cpu_seconds_total": ("counter", "CPU time used on a node (all of it)"),
    "kled_node_memory_bytes": ("gauge", "Memory in use on a node"),
    "kled_node_replicas": ("gauge", "Replicas an agent runs"),
}


@dataclass
class _NodeEntry:
    received: float
    capacity: Capacity
    replicas: list[ReplicaStatus]
    usage: dict[str, ReplicaUsage] = field(default_factory=dict)
    node_usage: NodeUsage | None = None
    #: the node's WireGuard gateways per team, with their peers' latest handshakes
    mesh: dict[str, TeamMeshReport] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplicaRow:
    node: str
    team: str
    environment: str
    app: str
    index: int
    status: ReplicaStatus
    usage: ReplicaUsage | None

    @property
    def ready(self) -> bool:
        if self.status.ready is not None:
            return self.status.ready
        return self.status.state == ReplicaState.RUNNING


def _parse(replica_id: str) -> tuple[str, str, str, int] | None:
    parts = replica_id.split(".")
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    return parts[0], parts[1], parts[2], int(parts[3])


class UsageBook:
    """node → its latest heartbeat's replicas and usage."""

    def __init__(
        self, stale_after: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stale_after = stale_after
        self._clock = clock
        self._nodes: dict[str, _NodeEntry] = {}

    def record(self, hb: NodeHeartbeat) -> None:
        """Take a heartbeat; one without usage (between samples) keeps the last usage."""
        before = self._nodes.get(hb.node)
        entry = _NodeEntry(self._clock(), hb.capacity, list(hb.replicas), mesh=dict(hb.mesh))
        if hb.usage is not None:
            entry.usage = dict(hb.usage)
            entry.node_usage = hb.node_usage
        elif before is not None:
            listed = {r.id for r in hb.replicas}
            entry.usage = {k: v for k, v in before.usage.items() if k in listed}
            entry.node_usage = before.node_usage
        self._nodes[hb.node] = entry

    def node_names(self) -> list[str]:
        """Every node with a heartbeat remembered, fresh or not."""
        return sorted(self._nodes)

    def forget(self, node: str) -> None:
        self._nodes.pop(node, None)

    def handshakes(self, team: str) -> dict[str, dict[str, datetime]]:
        """node → {peer public key → its latest handshake} on the node's gateway of
        ``team``, as the fresh nodes last reported (the console's mesh drawing)."""
        return {
            node: dict(entry.mesh[team].handshakes)
            for node, entry in self._fresh()
            if team in entry.mesh
        }

    def _fresh(self) -> Iterator[tuple[str, _NodeEntry]]:
        now = self._clock()
        for name, entry in sorted(self._nodes.items()):
            if now - entry.received <= self.stale_after:
                yield name, entry

    def replicas(self, team: str | None = None) -> list[ReplicaRow]:
        """Every replica the fresh nodes report (of ``team`` only, if given)."""
        rows: list[ReplicaRow] = []
        for node, entry in self._fresh():
            for status in entry.replicas:
                if status.state == ReplicaState.STOPPED:
                    continue  # leaving: an old home of a moved replica, or scaled away
                parsed = _parse(status.id)
                if parsed is None or (team is not None and parsed[0] != team):
                    continue
                usage = entry.usage.get(status.id)
                rows.append(ReplicaRow(node, *parsed, status=status, usage=usage))
        return rows

    def apps(
        self, team: str, environment: str | None = None, services: ServiceIndex | None = None
    ) -> list[dict[str, Any]]:
        """One row per app of ``team`` (in ``environment``), as ``kled top apps`` shows;
        the managed services' server apps (``services``) are left to :meth:`services`."""
        grouped: dict[tuple[str, str], list[ReplicaRow]] = {}
        for row in self.replicas(team):
            if (row.team, row.environment, row.app) in (services or {}):
                continue
            if environment is None or row.environment == environment:
                grouped.setdefault((row.environment, row.app), []).append(row)
        return [_app_row(team, env, app, rows) for (env, app), rows in sorted(grouped.items())]

    def services(
        self, team: str, services: ServiceIndex, environment: str | None = None
    ) -> list[dict[str, Any]]:
        """One row per managed service of ``team`` (``kled top services``): its server's
        usage under the service's name, with its template and phase; a service whose
        server reports nothing yet has a row without numbers."""
        measured: dict[tuple[str, str, str], list[ReplicaRow]] = {}
        for row in self.replicas(team):
            measured.setdefault((row.team, row.environment, row.app), []).append(row)
        out: list[dict[str, Any]] = []
        for key, about in sorted(services.items(), key=lambda kv: (kv[0][1], about_name(kv[1]))):
            if key[0] != team or (environment is not None and key[1] != environment):
                continue
            rows = measured.get(key, [])
            app_row = _app_row(team, key[1], key[2], rows)
            out.append({
                "team": team, "environment": key[1], "service": about_name(about),
                "template": about.get("template", ""), "phase": about.get("phase", ""),
                **{k: app_row[k] for k in ("ready", "restarts", "cpuMillicores", "cpuSeconds",
                                           "memoryBytes", "nodes")},
            })  # fmt: skip
        return out

    def nodes(self) -> list[dict[str, Any]]:
        """One row per fresh node, as ``kled top nodes`` shows."""
        out: list[dict[str, Any]] = []
        for name, entry in self._fresh():
            usage = entry.node_usage
            cap = entry.capacity
            row: dict[str, Any] = {
                "node": name,
                "cpuMillicores": usage.cpu_millicores if usage else None,
                "memoryBytes": usage.memory_bytes if usage else None,
                "capacity": {"cpuMillicores": cap.cpu_millicores, "memoryBytes": cap.memory_bytes},
                "replicas": len(entry.replicas),
            }
            row["cpuPercent"] = _percent(row["cpuMillicores"], cap.cpu_millicores)
            row["memoryPercent"] = _percent(row["memoryBytes"], cap.memory_bytes)
            out.append(row)
        return out

    def samples(
        self, team: str | None = None, services: ServiceIndex | None = None
    ) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Prometheus samples per family name (of ``team`` only, if given); a managed
        service's server (``services``) as ``kled_service_*`` under the service's name."""
        out: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in FAMILIES}
        ready: dict[tuple[str, str, str], int] = {}
        for row in self.replicas(team):
            about = (services or {}).get((row.team, row.environment, row.app))
            if about is not None:
                _service_samples(out, row, about)
                continue
            app = {"team": row.team, "environment": row.environment, "app": row.app}
            key = (row.team, row.environment, row.app)
            ready[key] = ready.get(key, 0) + (1 if row.ready else 0)
            labels = {**app, "replica": str(row.index), "node": row.node}
            out["kled_app_restarts_total"].append((labels, float(row.status.restarts)))
            usage = row.usage
            if usage is None:
                continue
            out["kled_app_cpu_seconds_total"].append((labels, usage.cpu_seconds))
            out["kled_app_memory_bytes"].append((labels, float(usage.memory_bytes)))
            if usage.rx_bytes is not None and usage.tx_bytes is not None:
                out["kled_app_network_receive_bytes_total"].append((labels, float(usage.rx_bytes)))
                out["kled_app_network_transmit_bytes_total"].append((labels, float(usage.tx_bytes)))
        for (t, env, name), count in sorted(ready.items()):
            labels = {"team": t, "environment": env, "app": name}
            out["kled_app_ready_replicas"].append((labels, float(count)))
        if team is None:  # a node's own numbers are no team's business
            for name, entry in self._fresh():
                node = {"node": name}
                out["kled_node_replicas"].append((node, float(len(entry.replicas))))
                if entry.node_usage is not None:
                    u = entry.node_usage
                    out["kled_node_cpu_seconds_total"].append((node, u.cpu_seconds))
                    out["kled_node_memory_bytes"].append((node, float(u.memory_bytes)))
        return out


#: managed services by their server app ``(team, environment, app)``: ``service`` (its
#: name), ``template`` and ``phase`` (what ``api/usage.py`` reads from the store)
ServiceIndex = Mapping[tuple[str, str, str], Mapping[str, Any]]


def about_name(about: Mapping[str, Any]) -> str:
    return str(about.get("service") or "")


def _service_samples(
    out: dict[str, list[tuple[dict[str, str], float]]], row: ReplicaRow, about: Mapping[str, Any]
) -> None:
    labels = {"team": row.team, "environment": row.environment, "service": about_name(about),
              "template": str(about.get("template") or ""), "node": row.node}  # fmt: skip
    out["kled_service_restarts_total"].append((labels, float(row.status.restarts)))
    out["kled_service_ready"].append((labels, 1.0 if row.ready else 0.0))
    if row.usage is not None:
        out["kled_service_cpu_seconds_total"].append((labels, row.usage.cpu_seconds))
        out["kled_service_memory_bytes"].append((labels, float(row.usage.memory_bytes)))


def _percent(used: int | None, total: int) -> int | None:
    if used is None or total <= 0:
        return None
    return round(100 * used / total)


def _app_row(team: str, environment: str, app: str, rows: list[ReplicaRow]) -> dict[str, Any]:
    measured = [r.usage for r in rows if r.usage is not None]
    millicores = [u.cpu_millicores for u in measured if u.cpu_millicores is not None]
    return {
        "team": team,
        "environment": environment,
        "app": app,
        "replicas": len(rows),
        "ready": sum(1 for r in rows if r.ready),
        "restarts": sum(r.status.restarts for r in rows),
        "cpuMillicores": sum(millicores) if millicores else None,
        "cpuSeconds": sum(u.cpu_seconds for u in measured) if measured else None,
        "memoryBytes": sum(u.memory_bytes for u in measured) if measured else None,
        "rxBytes": _total([u.rx_bytes for u in measured]),
        "txBytes": _total([u.tx_bytes for u in measured]),
        "nodes": sorted({r.node for r in rows}),
    }


def _total(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None
