"""What each host's network must look like, computed from the mesh's resources.

The mesh controller (``meshctl``) gives every team a block, every node a mesh IP and a pod
subnet in every team (``Node.status.mesh.<team>``), every app a service IP and every device
a mesh IP; the netmap knows who peers with whom; the workload controller knows which
replicas run where. This module joins them into one ``HostNetwork`` per node
(``kled.resources.netstate``), the network half of the node's desired state:

- one ``TeamNetwork`` per team on **every** node that has its addresses in that team (the
  same choice as ``meshctl``: every node is in every team's mesh, so service IPs answer on
  every node and a device can use any node as its gateway);
- the team's services with, as backends, the pod IPs of the app's replicas on any node, and
  the intercepts (global, or personal by HTTP header) pointed at the device's mesh IP;
- one ``PodNetwork`` per replica placed on the node.

Pod IPs are assigned here, by the control plane, so that service backends are known without
a round trip to the agents: the lowest free address of the node's pod subnet from ``.10``
on, kept for as long as the replica stays on the node (``PodAddressBook``), and written to
``App.status.podIPs`` so that a restarted control plane gives each replica the same one.

``HostStateComposer`` sits between the workload controller and the Message Office: it
remembers each node's replicas, merges the network part and forwards the combined value.
Everything here but the composer's forwarding is pure and is tested without a host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from kled.control.appstatus import is_ready
from kled.control.netmap import Peer as MeshPeer
from kled.resources import clusterservices
from kled.resources.hoststate import HostDesiredState, ReplicaSpec
from kled.resources.netstate import (
    ClusterPods,
    HostNetwork,
    Intercept,
    PersonalIntercept,
    PodNetwork,
    Service,
    ServicePort,
    TeamNetwork,
)
from kled.resources.netstate import Peer as WgPeer
from kled.resources.workspacestate import WorkspaceOnHost, parse_workspace_id

log = logging.getLogger(__name__)

TEAM_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
#: a team's WireGuard port on every host: this plus the block's offset in /24s inside
#: 100.64.0.0/10. Blocks never overlap, so two teams never share a port on a host, and the
#: port never changes while the team exists. 16384-32767 stays below Linux's ephemeral range.
LISTEN_PORT_BASE = 16384
#: pod IPs start here in the node's pod subnet (.1 is the bridge; the rest kept in reserve)
FIRST_POD_OFFSET = 10
#: devices are usually behind NAT: keep their mapping open from the node's side
DEVICE_KEEPALIVE = 25


def listen_port(block: str) -> int:
    """The team's WireGuard listen port on every host, derived from its block."""
    net = ipaddress.IPv4Network(block)
    offset = int(net.network_address) - int(TEAM_SPACE.network_address)
    return LISTEN_PORT_BASE + (offset >> 8)


# ---- the inputs, as plain values --------------------------------------------------------


@dataclass(frozen=True)
class TeamInfo:
    name: str
    block: str
    zone: str = "kled.internal"


@dataclass(frozen=True)
class NodeAddresses:
    """One node's addresses in one team, as meshctl wrote them to Node.status.mesh."""

    mesh_ip: str
    pod_subnet: str


@dataclass(frozen=True)
class ServiceInfo:
    team: str
    env: str
    name: str
    ip: str
    ports: tuple[ServicePort, ...]
    #: ``autoscale.minReplicas: 0`` or ``targetRequestsPerSecond``: its connections go
    #: through the gateways' routers, which count them
    hold: bool = False
    #: a Kled Cluster Service's ClusterIP leading to the app (``clusterservices``): an
    #: intercept's ports, the app's, are its target ports
    cluster: bool = False


@dataclass(frozen=True)
class InterceptInfo:
    """An Intercept resource resolved to the device's mesh IP."""

    team: str
    env: str
    name: str
    app: str
    device_ip: str
    #: service port → device port; empty means every port of the app, unchanged
    port_map: tuple[tuple[int, int], ...] = ()
    header: tuple[str, str] | None = None
    #: what the gateways do while the device is silent: fallback to the replicas, or keep
    on_device_offline: str = "fallback"
    #: set when the target is a workspace (``ws/<name>``): its pod IP is known only once
    #: ``build_networks`` gave it one, and fills ``device_ip`` then
    workspace: str | None = None


@dataclass
class MeshSnapshot:
    """Everything the network of every host depends on, apart from the replicas."""

    teams: dict[str, TeamInfo] = field(default_factory=dict)
    #: (team, node) → the node's addresses in the team
    nodes: dict[tuple[str, str], NodeAddresses] = field(default_factory=dict)
    services: list[ServiceInfo] = field(default_factory=list)
    intercepts: list[InterceptInfo] = field(default_factory=list)
    #: ip:port the team gateways send their pods' DNS queries to
    dns_server: str | None = None
    #: node → ip:port of the DNS server as that node reaches it (else ``dns_server``)
    node_dns: dict[str, str] = field(default_factory=dict)
    #: every node that exists (with or without addresses yet)
    node_names: set[str] = field(default_factory=set)
    #: replica id → the pod IP it had (App.status.podIPs), to keep it across restarts
    pod_ip_seeds: dict[str, str] = field(default_factory=dict)
    #: replicas an agent reported Running and ready (``appstatus.is_ready``): only these are
    #: service backends, as only ready endpoints are in Kubernetes; None means "not known",
    #: every placed replica serves
    running: set[str] | None = None
    #: (team, env, app) → the Kled Cluster whose Deployment the app runs
    app_clusters: dict[tuple[str, str, str], str] = field(default_factory=dict)
    #: team → ClusterIPs of its exported cluster Services
    exported: dict[str, set[str]] = field(default_factory=dict)


def wg_peer(peer: MeshPeer) -> WgPeer | None:
    """A netmap peer as a WireGuard peer; None (logged) if it cannot be configured."""
    try:
        endpoint = peer.endpoint
        if endpoint is not None:
            host = endpoint.rpartition(":")[0].strip("[]")
            try:
                ipaddress.ip_address(host)
            except ValueError:
                endpoint = None  # a host name: WireGuard wants an address; the peer dials us
        return WgPeer(
            public_key=peer.public_key,
            endpoint=endpoint,
            allowed_ips=peer.allowed_ips,
            persistent_keepalive=DEVICE_KEEPALIVE if peer.kind == "device" else None,
        )
    except (ValidationError, ValueError) as e:
        log.warning("hostnet: peer %s left out: %s", peer.id, e)
        return None


def snapshot_from_documents(
    *,
    teams: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    services: Iterable[Mapping[str, Any]],
    devices: Iterable[Mapping[str, Any]],
    intercepts: Iterable[Mapping[str, Any]],
    dns_server: str | None,
    node_dns: Mapping[str, str] | None = None,
) -> MeshSnapshot:
    """Read the resources (as stored, with the statuses meshctl wrote) into a snapshot;
    ``node_dns`` gives a node's own address of the DNS server where it differs."""
    snap = MeshSnapshot(dns_server=dns_server, node_dns=dict(node_dns or {}))
    for team in teams:
        meta, status = team.get("metadata") or {}, team.get("status") or {}
        if meta.get("deletionTimestamp") or not status.get("block"):
            continue
        # status.zone is the team's apex as meshctl serves it (the server's --zone applied)
        name = str(meta["name"])
        apex = str(status.get("zone") or f"{name}.kled.internal")
        zone = apex[len(name) + 1 :] if apex.startswith(f"{name}.") else apex
        snap.teams[name] = TeamInfo(name, str(status["block"]), zone)
    for node in nodes:
        meta = node.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        name = meta["name"]
        snap.node_names.add(name)
        for team, entry in ((node.get("status") or {}).get("mesh") or {}).items():
            if team in snap.teams and entry.get("ip") and entry.get("podSubnet"):
                snap.nodes[(team, name)] = NodeAddresses(str(entry["ip"]), entry["podSubnet"])
    for doc in services:
        meta, status = doc.get("metadata") or {}, doc.get("status") or {}
        if meta.get("deletionTimestamp") or not status.get("ip"):
            continue
        ports = tuple(
            ServicePort(
                port=int(p["port"]),
                protocol=str(p.get("protocol") or "TCP"),  # type: ignore[arg-type]
                target_port=int(p.get("targetPort") or p["port"]),
            )
            for p in (doc.get("spec") or {}).get("ports") or []
        )
        env = str(meta.get("environment") or "")
        if doc.get("kind") == "ManagedService":
            # Its server runs as an App (``control/managed.py``): that app's replicas are
            # the backends of the service's own IP, on the port the template gives.
            app = status.get("app")
            ports = tuple(
                ServicePort(port=int(p), protocol="TCP", target_port=int(p))
                for p in status.get("ports") or []
            )
            if app:
                snap.services.append(ServiceInfo(meta["team"], env, str(app), status["ip"], ports))
            continue
        bounds = (doc.get("spec") or {}).get("autoscale") or {}
        hold = bounds.get("minReplicas", 1) == 0 or bool(bounds.get("targetRequestsPerSecond"))
        snap.services.append(
            ServiceInfo(meta["team"], env, meta["name"], status["ip"], ports, hold=hold)
        )
        cluster = (meta.get("labels") or {}).get(clusterservices.CLUSTER_LABEL)
        if cluster:
            snap.app_clusters[(meta["team"], env, meta["name"])] = str(cluster)
        for extra in clusterservices.entries(doc):  # a Kled Cluster's Services picking it
            if extra.exported:
                snap.exported.setdefault(meta["team"], set()).add(extra.ip)
            extra_ports = tuple(
                ServicePort(port=p.port, protocol=p.protocol, target_port=p.target_port)  # type: ignore[arg-type]
                for p in extra.ports
            )
            snap.services.append(
                ServiceInfo(
                    meta["team"], env, meta["name"], extra.ip, extra_ports, hold=hold, cluster=True
                )
            )
        for index, ip in (status.get("podIPs") or {}).items():
            snap.pod_ip_seeds[f"{meta['team']}.{env}.{meta['name']}.{index}"] = str(ip)
        if snap.running is None:
            snap.running = set()
        for replica in status.get("replicas") or []:
            if is_ready(replica) and "index" in replica:
                snap.running.add(f"{meta['team']}.{env}.{meta['name']}.{replica['index']}")
    device_ips = {
        (d["metadata"]["team"], d["metadata"]["name"]): str((d.get("status") or {})["ip"])
        for d in devices
        if (d.get("status") or {}).get("ip") and not d["metadata"].get("deletionTimestamp")
    }
    for doc in intercepts:
        meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
        target = str(spec.get("device") or "")
        workspace = target[3:] if target.startswith("ws/") else None
        device_ip = "" if workspace else device_ips.get((meta.get("team"), target))
        if meta.get("deletionTimestamp") or device_ip is None:
            continue
        header = spec.get("header")
        snap.intercepts.append(
            InterceptInfo(
                team=meta["team"],
                env=str(meta.get("environment") or ""),
                name=meta["name"],
                app=str(spec["app"]),
                device_ip=device_ip,
                port_map=tuple(
                    (int(p["port"]), int(p.get("localPort") or p["port"]))
                    for p in spec.get("ports") or []
                ),
                header=(str(header["name"]), str(header["value"])) if header else None,
                on_device_offline=str(spec.get("onDeviceOffline") or "fallback"),
                workspace=workspace,
            )
        )
    return snap


# ---- pod IPs ----------------------------------------------------------------------------


class PodAddressBook:
    """Pod IPs by replica: stable while a replica stays in one node's pod subnet.

    An address let go is not handed out again while others are free: the replica that had
    it may still be stopping on its node, its pod kept until it ends (a rolling update
    removes one replica and adds another in the same step)."""

    #: addresses remembered as recently let go (the oldest are reused first when full)
    FREED_KEPT = 1024

    def __init__(self) -> None:
        self._ips: dict[str, str] = {}
        #: recently let go, oldest first
        self._freed: dict[str, None] = {}
        #: subnet → how many replicas it had no address for when that was last said
        self._short: dict[str, int] = {}

    def get(self, replica_id: str) -> str | None:
        return self._ips.get(replica_id)

    def snapshot(self) -> dict[str, str]:
        return dict(self._ips)

    def assign(
        self, subnet: str, replica_ids: Iterable[str], seeds: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Pod IPs for the replicas of one team on one node, in ``subnet``.

        A replica keeps the address it had (from this book, else from ``seeds``) when it is
        inside the subnet and no other replica holds it; the others get the lowest free
        address from ``.10`` on. Replicas that do not fit are left out (and logged)."""
        net = ipaddress.IPv4Network(subnet)
        first = int(net.network_address) + FIRST_POD_OFFSET
        last = int(net.broadcast_address) - 1
        wanted = sorted(set(replica_ids))
        taken: dict[str, str] = {}
        used: set[str] = set()
        for rid in wanted:
            for previous in (self._ips.get(rid), (seeds or {}).get(rid)):
                if previous is None or previous in used:
                    continue
                value = int(ipaddress.IPv4Address(previous))
                if first <= value <= last:
                    taken[rid] = previous
                    used.add(previous)
                    break
        # Addresses of replicas leaving in this same pass count as let go already.
        leaving = {ip for rid, ip in self._ips.items() if rid not in taken}
        candidate = first
        homeless: list[str] = []
        for rid in wanted:
            if rid in taken:
                continue
            while candidate <= last and (
                str(ipaddress.IPv4Address(candidate)) in used
                or str(ipaddress.IPv4Address(candidate)) in self._freed
                or str(ipaddress.IPv4Address(candidate)) in leaving
            ):
                candidate += 1
            if candidate <= last:
                ip = str(ipaddress.IPv4Address(candidate))
            else:
                # Nothing never-used is left: the address let go longest ago.
                again = next(
                    (a for a in self._freed
                     if a not in used and first <= int(ipaddress.IPv4Address(a)) <= last),
                    None,
                )  # fmt: skip
                if again is None:
                    homeless.append(rid)
                    continue
                ip = again
            taken[rid] = ip
            used.add(ip)
            self._freed.pop(ip, None)
        for rid in wanted:
            if rid in taken:
                self._ips[rid] = taken[rid]
        self._say_short(subnet, homeless)
        return taken

    def _say_short(self, subnet: str, homeless: list[str]) -> None:
        """A full subnet said once, and again only when how many it leaves out changes
        (it was a line per replica at every pass: thousands a second on a crowded node)."""
        if len(homeless) == self._short.get(subnet, 0):
            return
        if homeless:
            self._short[subnet] = len(homeless)
            more = f" and {len(homeless) - 1} more" if len(homeless) > 1 else ""
            log.warning(
                "hostnet: pod subnet %s is full: replica/%s%s have no IP", subnet, homeless[0], more
            )
        else:
            del self._short[subnet]
            log.info("hostnet: pod subnet %s has room for all its replicas again", subnet)

    def forget_except(self, live: Iterable[str]) -> None:
        keep = set(live)
        for rid, ip in self._ips.items():
            if rid not in keep:
                self._freed.pop(ip, None)
                self._freed[ip] = None
        while len(self._freed) > self.FREED_KEPT:
            del self._freed[next(iter(self._freed))]
        self._ips = {rid: ip for rid, ip in self._ips.items() if rid in keep}


# ---- composition ------------------------------------------------------------------------


def _service(
    info: ServiceInfo, backends: tuple[str, ...], intercepts: list[InterceptInfo]
) -> Service:
    all_ports = {p.port: p.port for p in info.ports}
    global_icpt: Intercept | None = None
    personal: list[PersonalIntercept] = []
    for icpt in sorted(intercepts, key=lambda i: i.name):
        port_map = _port_map(info, icpt) if info.cluster else None
        if port_map is None:
            port_map = {a: b for a, b in icpt.port_map if a in all_ports} or dict(all_ports)
        if not port_map:
            continue
        if icpt.header is None:
            if global_icpt is None:  # the first by name wins; the others wait their turn
                global_icpt = Intercept(
                    target_ip=icpt.device_ip,
                    port_map=port_map,
                    on_device_offline=_offline(icpt),
                )
            continue
        tcp = {p.port for p in info.ports if p.protocol == "TCP"}
        tcp_map = {a: b for a, b in port_map.items() if a in tcp}
        if tcp_map and (icpt.header[0].lower(), icpt.header[1].strip()) not in {
            (p.header, p.value) for p in personal
        }:
            personal.append(
                PersonalIntercept(
                    header=icpt.header[0],
                    value=icpt.header[1],
                    target_ip=icpt.device_ip,
                    port_map=tcp_map,
                    on_device_offline=_offline(icpt),
                )
            )
    return Service(
        name=info.name,
        env=info.env,
        ip=info.ip,
        ports=info.ports,
        backends=backends,
        intercept=global_icpt,
        personal=tuple(personal),
        hold=info.hold,
    )


def _port_map(info: ServiceInfo, icpt: InterceptInfo) -> dict[int, int]:
    """An intercept of an app on a cluster Service's ClusterIP leading to it: each Service
    port whose target port (a port of the app) the intercept takes goes where that port
    goes; with no ports listed, every Service port goes to its target port on the device."""
    if not icpt.port_map:
        return {p.port: p.target_port for p in info.ports}
    taken = dict(icpt.port_map)
    return {p.port: taken[p.target_port] for p in info.ports if p.target_port in taken}


def _offline(icpt: InterceptInfo) -> Literal["fallback", "keep"]:
    return "keep" if icpt.on_device_offline == "keep" else "fallback"


def build_networks(
    snap: MeshSnapshot,
    replicas: Mapping[str, Iterable[ReplicaSpec]],
    book: PodAddressBook,
    node_names: Iterable[str] = (),
    workspaces: Mapping[str, Iterable[WorkspaceOnHost]] | None = None,
) -> dict[str, HostNetwork]:
    """Every node's ``HostNetwork``: the nodes in ``snap`` and those in ``replicas``/
    ``node_names`` (a node with no addresses yet gets an empty network).

    A workspace placed on a node gets a pod there too (id ``<team>._ws.<name>.0``, no
    environment, never a service backend), from the same subnet and book as replicas."""
    nodes = sorted({n for _, n in snap.nodes} | set(replicas) | set(node_names))
    pods: dict[str, list[PodNetwork]] = {n: [] for n in nodes}
    backends: dict[tuple[str, str, str], list[str]] = {}
    #: team → cluster → its pod IPs on every node (kept apart by the gateways)
    cluster_pods: dict[str, dict[str, set[str]]] = {}
    for node in nodes:
        by_team: dict[str, list[ReplicaSpec]] = {}
        for r in replicas.get(node, ()):
            by_team.setdefault(r.team, []).append(r)
        ws_by_team: dict[str, list[str]] = {}
        for w in (workspaces or {}).get(node, ()):
            ws_by_team.setdefault(w.team, []).append(w.id)
        for team in sorted(set(by_team) | set(ws_by_team)):
            rs = by_team.get(team, [])
            where = snap.nodes.get((team, node))
            if where is None:
                continue  # the team's addresses on this node are not known yet
            wids = ws_by_team.get(team, [])
            ips = book.assign(where.pod_subnet, [r.id for r in rs] + wids, snap.pod_ip_seeds)
            for wid in wids:
                if wid in ips:
                    pods[node].append(PodNetwork(replica_id=wid, team=team, ip=ips[wid]))
            for r in rs:
                ip = ips.get(r.id)
                if ip is None:
                    continue
                pods[node].append(
                    PodNetwork(replica_id=r.id, team=team, ip=ip, environment=r.environment)
                )
                cluster = snap.app_clusters.get((team, r.environment, r.app))
                if cluster:
                    cluster_pods.setdefault(team, {}).setdefault(cluster, set()).add(ip)
                if snap.running is None or r.id in snap.running:
                    backends.setdefault((team, r.environment, r.app), []).append(ip)
    book.forget_except(p.replica_id for ps in pods.values() for p in ps)
    intercepts: dict[tuple[str, str, str], list[InterceptInfo]] = {}
    ws_ips = workspace_ips(book)
    for icpt in snap.intercepts:
        if icpt.workspace is not None:
            ws_ip = ws_ips.get(icpt.team, {}).get(icpt.workspace)
            if ws_ip is None:
                continue  # the workspace has no pod (yet): nothing to point at
            icpt = dataclasses.replace(icpt, device_ip=ws_ip)
        intercepts.setdefault((icpt.team, icpt.env, icpt.app), []).append(icpt)
    services: dict[str, list[Service]] = {}
    by_ip: dict[tuple[str, str], int] = {}
    for info in sorted(snap.services, key=lambda s: (s.team, s.env, s.name)):
        key = (info.team, info.env, info.name)
        built = _service(info, tuple(backends.get(key, ())), intercepts.get(key, []))
        team_services = services.setdefault(info.team, [])
        at = by_ip.get((info.team, info.ip))
        if at is not None:  # a Kled Cluster Service picking the pods of several Apps
            first = team_services[at]
            union = tuple(sorted({*first.backends, *built.backends}))
            team_services[at] = first.model_copy(update={"backends": union})
            continue
        by_ip[(info.team, info.ip)] = len(team_services)
        team_services.append(built)
    out: dict[str, HostNetwork] = {}
    for node in nodes:
        teams: list[TeamNetwork] = []
        for name, info_t in sorted(snap.teams.items()):
            where = snap.nodes.get((name, node))
            if where is None:
                continue
            teams.append(
                TeamNetwork(
                    team=name,
                    block=info_t.block,
                    mesh_ip=where.mesh_ip,
                    pod_subnet=where.pod_subnet,
                    listen_port=listen_port(info_t.block),
                    services=tuple(services.get(name, ())),
                    dns_server=snap.node_dns.get(node, snap.dns_server),
                    search_domain=f"{name}.{info_t.zone}",
                    clusters=tuple(
                        ClusterPods(name=c, pods=tuple(ips))
                        for c, ips in sorted(cluster_pods.get(name, {}).items())
                    ),
                    exported=tuple(snap.exported.get(name, ())),
                )
            )
        present = {t.team for t in teams}
        out[node] = HostNetwork(
            teams=tuple(teams),
            pods=tuple(
                sorted((p for p in pods[node] if p.team in present), key=lambda p: p.replica_id)
            ),
        )
    return out


def pod_ips_by_app(book: PodAddressBook) -> dict[tuple[str, str, str], dict[str, str]]:
    """The book as ``App.status.podIPs`` values: (team, env, app) → {index: ip}."""
    out: dict[tuple[str, str, str], dict[str, str]] = {}
    for rid, ip in book.snapshot().items():
        parts = rid.split(".")
        if len(parts) == 4 and parse_workspace_id(rid) is None:
            out.setdefault((parts[0], parts[1], parts[2]), {})[parts[3]] = ip
    return out


def workspace_ips(book: PodAddressBook) -> dict[str, dict[str, str]]:
    """The workspaces' pod IPs in the book: team → {workspace: ip} (their DNS names)."""
    out: dict[str, dict[str, str]] = {}
    for rid, ip in book.snapshot().items():
        parsed = parse_workspace_id(rid)
        if parsed is not None:
            out.setdefault(parsed[0], {})[parsed[1]] = ip
    return out


# ---- the composer -----------------------------------------------------------------------


class StateSink(Protocol):
    """``kled.control.workloads.DesiredStateSink``, restated to keep this module pure."""

    def put(self, node: str, state: HostDesiredState) -> Awaitable[None] | None: ...


def with_network(state: HostDesiredState, network: HostNetwork | None) -> HostDesiredState:
    """The state carrying its network (None: "leave the host's network alone")."""
    return state.model_copy(update={"network": network})


class HostStateComposer:
    """A ``DesiredStateSink`` that adds each node's network to its replicas.

    The workload controller calls ``put`` when a node's replicas change; the mesh side
    calls ``set_mesh`` when addresses, peers, services or intercepts change. Either way the
    networks of every node are recomputed (a replica moving changes the service backends
    on every node) and each node whose combined value changed is forwarded to ``inner``.

    Until the first ``set_mesh`` the network is sent as None, which agents read as "leave
    the network alone": a control plane that restarts must not tell every host to tear its
    gateways down for the instant before it has read the mesh back.
    """

    def __init__(self, inner: StateSink, book: PodAddressBook | None = None) -> None:
        self.inner = inner
        self.book = book or PodAddressBook()
        self.snapshot: MeshSnapshot | None = None
        self.networks: dict[str, HostNetwork] = {}
        self._states: dict[str, HostDesiredState] = {}
        self._sent: dict[str, HostDesiredState] = {}
        #: told the workspaces' pod IPs (team → {name: ip}) whenever they change: DNS
        self.on_workspace_ips: Callable[[dict[str, dict[str, str]]], object] | None = None
        self._workspace_ips: dict[str, dict[str, str]] = {}
        # One recomputation at a time: an older one still sending must not overwrite a
        # node's newer value.
        self._lock = asyncio.Lock()

    async def put(self, node: str, state: HostDesiredState) -> None:
        await self.put_many({node: state})

    async def put_many(self, states: Mapping[str, HostDesiredState]) -> None:
        """Many nodes' states, with one recomputation of the networks for them all."""
        async with self._lock:
            self._states.update(states)
            await self._recompute(force=frozenset(states))

    async def set_mesh(self, snapshot: MeshSnapshot) -> None:
        async with self._lock:
            self.snapshot = snapshot
            await self._recompute()

    async def _recompute(self, force: frozenset[str] = frozenset()) -> None:
        snap = self.snapshot
        if snap is not None:
            replicas = {node: s.replicas for node, s in self._states.items()}
            placed = {node: s.workspaces or [] for node, s in self._states.items()}
            self.networks = build_networks(snap, replicas, self.book, self._states, placed)
            ws_ips = workspace_ips(self.book)
            if ws_ips != self._workspace_ips:
                self._workspace_ips = ws_ips
                if self.on_workspace_ips is not None:
                    told = self.on_workspace_ips(ws_ips)
                    if inspect.isawaitable(told):
                        await told
        for node, state in list(self._states.items()):
            network = None if snap is None else self.networks.get(node, HostNetwork())
            combined = with_network(state, network)
            if node not in force:
                if self._sent.get(node) == combined:
                    continue
                if snap is not None and node not in snap.node_names and not state.replicas:
                    # A deleted node: its key in the Message Office is gone; keep it gone.
                    self._states.pop(node, None)
                    self._sent.pop(node, None)
                    continue
            result = self.inner.put(node, combined)
            if inspect.isawaitable(result):
                await result
            self._sent[node] = combined
