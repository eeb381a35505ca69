"""The desired network state of one host, as typed data.

The control plane (IPAM, netmap, service and intercept controllers) computes, per host, the
teams present there with their addresses, WireGuard peers and services, and the pod IP of each
replica; the agent's network layer (``kled.agent.net``) makes it real. Keeping it here, in
``kled.resources``, lets both sides import one contract.

Merge rule: a host's ``HostNetwork`` is replaced whole, never patched. ``diff_host`` turns two
of them into the smallest set of changes (teams and pods to add, change or remove), so that a
reconciler touches only what moved; it is a pure function, tested without a host.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

Protocol = Literal["TCP", "UDP"]


class _Model(BaseModel):
    # Frozen so that values can be compared and hashed when diffing; unknown fields refused
    # so that a typo on either side of the wire fails loudly.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_endpoint(value: str | None) -> str | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {value!r} is not ip:port")
    ipaddress.ip_address(host.strip("[]"))
    return value


class Peer(_Model):
    """One WireGuard peer of a team's interface: another node, a device or a workspace."""

    public_key: str = Field(min_length=44, max_length=44)
    endpoint: str | None = None
    allowed_ips: tuple[str, ...] = ()
    persistent_keepalive: int | None = Field(default=None, ge=0, le=65535)

    _endpoint = field_validator("endpoint")(_check_endpoint)

    @field_validator("allowed_ips")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(ipaddress.ip_network(v, strict=False)) for v in value)


class ServicePort(_Model):
    port: int = Field(ge=1, le=65535)
    protocol: Protocol = "TCP"
    target_port: int = Field(ge=1, le=65535)


OnDeviceOffline = Literal["fallback", "keep"]


class Intercept(_Model):
    """Points a service's traffic at a device's mesh IP instead of its replicas."""

    target_ip: str
    #: service port → port on the device; ports not listed keep going to the replicas
    port_map: dict[int, int]
    protocols: tuple[Protocol, ...] = ("TCP", "UDP")
    #: when the device misses handshakes: back to the replicas (``fallback``) or ``keep``
    on_device_offline: OnDeviceOffline = "fallback"

    @field_validator("target_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return str(ipaddress.IPv4Address(value))

    def __hash__(self) -> int:
        ports = tuple(sorted(self.port_map.items()))
        return hash((self.target_ip, ports, self.protocols, self.on_device_offline))


#: an HTTP field name (RFC 9110 token), compared case-insensitively, so kept lower-case
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+\Z")
#: request headers that route HTTP itself; matching on them would misroute ordinary traffic
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te"}
)


class PersonalIntercept(_Model):
    """Points only the HTTP requests that carry ``header: value`` at a device.

    The gateway's header router reads the first request of each TCP connection (HTTP/1.1 or
    HTTP/2 cleartext) to a listed service port and sends the connection to ``target_ip`` when
    the header matches, else to a replica. A global ``Service.intercept`` of the same port
    wins over every personal one (docs/intercept.md).
    """

    #: header name, case-insensitive (stored lower-case), e.g. ``x-kled-dev``
    header: str = Field(min_length=1, max_length=100)
    #: the exact field value (surrounding spaces ignored), e.g. ``alice``
    value: str = Field(min_length=1, max_length=200)
    target_ip: str
    #: service port → port on the device; only TCP ports can be routed by header
    port_map: dict[int, int]
    #: as ``Intercept.on_device_offline``
    on_device_offline: OnDeviceOffline = "fallback"

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        name = value.strip().lower()
        if not _HEADER_NAME.match(name) or name.startswith(":"):
            raise ValueError(f"{value!r} is not an HTTP header name")
        if name in _RESERVED_HEADERS:
            raise ValueError(f"{name!r} routes HTTP itself and cannot select an intercept")
        return name

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped or any(ord(c) < 0x20 or ord(c) == 0x7F for c in stripped):
            raise ValueError("the header value must be printable and not blank")
        return stripped

    @field_validator("target_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return str(ipaddress.IPv4Address(value))

    @field_validator("port_map")
    @classmethod
    def _ports(cls, value: dict[int, int]) -> dict[int, int]:
        if not value:
            raise ValueError("a personal intercept needs at least one port")
        for src, dst in value.items():
            if not (0 < src < 65536 and 0 < dst < 65536):
                raise ValueError(f"port mapping {src}:{dst} is out of range")
        return value

    def __hash__(self) -> int:
        return hash((self.header, self.value, self.target_ip, tuple(sorted(self.port_map.items()))))


class Service(_Model):
    """An app's (or managed service's) service IP, load-balanced over its pod IPs."""

    name: str
    env: str
    ip: str
    ports: tuple[ServicePort, ...]
    #: pod IPs of the running replicas, on any node of the team
    backends: tuple[str, ...] = ()
    intercept: Intercept | None = None
    #: header-selected intercepts, one per developer; first match (in this order) wins
    personal: tuple[PersonalIntercept, ...] = ()
    #: the app may scale to zero: its TCP ports go through the gateway's router, which
    #: counts connections and holds them while there is no backend
    hold: bool = False

    @model_serializer(mode="wrap")
    def _omit_no_hold(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An agent older than scale to zero refuses keys it does not know.
        data: dict[str, Any] = handler(self)
        if not data.get("hold"):
            data.pop("hold", None)
        return data

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return str(ipaddress.IPv4Address(value))

    @field_validator("backends")
    @classmethod
    def _backends(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Sorted so that the same set of replicas always renders the same rules.
        return tuple(sorted({str(ipaddress.IPv4Address(v)) for v in value}, key=_ip_key))

    @model_validator(mode="after")
    def _one_device_per_header(self) -> Service:
        seen = [(p.header, p.value) for p in self.personal]
        if len(seen) != len(set(seen)):
            raise ValueError("two personal intercepts select the same header and value")
        return self

    def personal_ports(self) -> tuple[ServicePort, ...]:
        """The TCP ports whose connections the header router decides: listed by a personal
        intercept and not taken whole by the global intercept (which wins)."""
        wanted = {port for p in self.personal for port in p.port_map}
        global_icpt = self.intercept
        return tuple(
            sp
            for sp in self.ports
            if sp.protocol == "TCP"
            and sp.port in wanted
            and not (
                global_icpt is not None
                and "TCP" in global_icpt.protocols
                and sp.port in global_icpt.port_map
            )
        )


def _ip_key(value: str) -> int:
    return int(ipaddress.IPv4Address(value))


class ClusterPods(_Model):
    """The pod IPs of one Kled Cluster of the team, on every node: the gateways keep the
    pods of one cluster from reaching those of another (``agent/net/isolation.py``)."""

    name: str
    pods: tuple[str, ...] = ()

    @field_validator("pods")
    @classmethod
    def _pods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted({str(ipaddress.IPv4Address(v)) for v in value}, key=_ip_key))


class TeamNetwork(_Model):
    """Everything one team needs on one host: its gateway namespace and what it routes."""

    team: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    #: the team's whole block, e.g. 100.65.0.0/16
    block: str
    #: this node's mesh address, a /32 (given with or without the prefix)
    mesh_ip: str
    #: this node's pod subnet; its first address is the bridge gateway
    pod_subnet: str
    listen_port: int = Field(ge=1, le=65535)
    private_key_file: str | None = None
    peers: tuple[Peer, ...] = ()
    services: tuple[Service, ...] = ()
    #: ip:port that the pods' resolver (the gateway) forwards DNS queries to
    dns_server: str | None = None
    search_domain: str | None = None
    #: the team's Kled Clusters with their pods, isolated from each other
    clusters: tuple[ClusterPods, ...] = ()
    #: ClusterIPs of exported Services (``kled.io/export``): every cluster's pods reach them
    exported: tuple[str, ...] = ()

    _dns = field_validator("dns_server")(_check_endpoint)

    @model_serializer(mode="wrap")
    def _omit_no_clusters(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An agent older than cluster isolation refuses keys it does not know.
        data: dict[str, Any] = handler(self)
        for key in ("clusters", "exported"):
            if not data.get(key):
                data.pop(key, None)
        return data

    @field_validator("exported")
    @classmethod
    def _exported(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted({str(ipaddress.IPv4Address(v)) for v in value}, key=_ip_key))

    @field_validator("block", "pod_subnet")
    @classmethod
    def _net(cls, value: str) -> str:
        return str(ipaddress.IPv4Network(value, strict=True))

    @field_validator("mesh_ip")
    @classmethod
    def _mesh(cls, value: str) -> str:
        return str(ipaddress.IPv4Interface(value).ip)

    @model_validator(mode="after")
    def _inside_block(self) -> TeamNetwork:
        block = ipaddress.IPv4Network(self.block)
        if ipaddress.IPv4Address(self.mesh_ip) not in block:
            raise ValueError(f"mesh_ip {self.mesh_ip} is outside the team block {self.block}")
        subnet = ipaddress.IPv4Network(self.pod_subnet)
        if not subnet.subnet_of(block):
            raise ValueError(f"pod_subnet {self.pod_subnet} is outside the team block")
        if subnet.num_addresses < 4:
            raise ValueError(f"pod_subnet {self.pod_subnet} is too small (need at least /30)")
        return self

    @property
    def bridge_ip(self) -> str:
        """The pods' default gateway: the first host address of the pod subnet."""
        return str(next(ipaddress.IPv4Network(self.pod_subnet).hosts()))

    @property
    def pod_prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.pod_subnet).prefixlen

    def wiring(self) -> TeamNetwork:
        """This value without peers and services: what needs a rebuild when it changes."""
        return self.model_copy(update={"peers": (), "services": (), "clusters": (), "exported": ()})


class PodNetwork(_Model):
    """The network of one replica on this host: its own namespace with a pod IP."""

    replica_id: str = Field(min_length=1, max_length=253)
    team: str
    ip: str
    #: the replica's environment: its pod searches ``<env>.<team>.<zone>`` first
    environment: str | None = None

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        return str(ipaddress.IPv4Address(value))


class HostNetwork(_Model):
    """The whole desired network state of one host."""

    teams: tuple[TeamNetwork, ...] = ()
    pods: tuple[PodNetwork, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> HostNetwork:
        names = [t.team for t in self.teams]
        if len(names) != len(set(names)):
            raise ValueError("a team appears twice")
        # Every team's WireGuard socket sits on the host's own addresses.
        ports = [t.listen_port for t in self.teams]
        if len(ports) != len(set(ports)):
            raise ValueError("two teams share a WireGuard listen port on this host")
        ids = [p.replica_id for p in self.pods]
        if len(ids) != len(set(ids)):
            raise ValueError("a replica appears twice")
        unknown = {p.team for p in self.pods} - set(names)
        if unknown:
            raise ValueError(f"pods of teams not on this host: {sorted(unknown)}")
        return self


class TeamChange(_Model):
    """What changed in one team: ``rewire`` means addresses or ports moved."""

    team: str
    rewire: bool
    peers: bool
    services: bool


class NetDiff(_Model):
    teams_added: tuple[TeamNetwork, ...] = ()
    teams_removed: tuple[str, ...] = ()
    teams_changed: tuple[TeamChange, ...] = ()
    pods_added: tuple[PodNetwork, ...] = ()
    pods_removed: tuple[PodNetwork, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.teams_added
            or self.teams_removed
            or self.teams_changed
            or self.pods_added
            or self.pods_removed
        )


def diff_host(old: HostNetwork, new: HostNetwork) -> NetDiff:
    """The changes that take a host from ``old`` to ``new``.

    A pod whose IP or team changed is removed and added again, since its namespace must be
    rewired; a team whose wiring changed is reported with ``rewire`` so that the gateway is
    rebuilt, while peers and services alone are updated in place.
    """
    old_teams = {t.team: t for t in old.teams}
    new_teams = {t.team: t for t in new.teams}
    added = tuple(t for name, t in new_teams.items() if name not in old_teams)
    removed = tuple(sorted(name for name in old_teams if name not in new_teams))
    changed = []
    for name, team in new_teams.items():
        before = old_teams.get(name)
        if before is None or before == team:
            continue
        changed.append(
            TeamChange(
                team=name,
                rewire=before.wiring() != team.wiring(),
                peers=before.peers != team.peers,
                services=before.services != team.services
                or (before.clusters, before.exported) != (team.clusters, team.exported),
            )
        )
    old_pods = {p.replica_id: p for p in old.pods}
    new_pods = {p.replica_id: p for p in new.pods}
    pods_removed = tuple(p for rid, p in old_pods.items() if new_pods.get(rid) != p)
    pods_added = tuple(p for rid, p in new_pods.items() if old_pods.get(rid) != p)
    return NetDiff(
        teams_added=added,
        teams_removed=removed,
        teams_changed=tuple(changed),
        pods_added=pods_added,
        pods_removed=pods_removed,
    )
