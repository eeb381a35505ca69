"""The team zones in memory: what the DNS server answers with authority, and how.

Each team's records arrive whole as a ``RecordSet`` (its apps with their service IPs and
named ports, its devices, its nodes) from the mesh controller. ``RecordIndex.apply`` turns
the set into ready-made resource records keyed by lower-case name, and swaps them in at
once, so a change is answered by the very next query; ``answer`` is then a couple of dict
lookups, whatever the size of the zone.

Per team the zone is ``<team>.<zone>`` (``acme.kled.internal``):

- ``<app>.<env>.<team>.<zone>``  A, the app's service IP
- ``_<port>._<tcp|udp>.<app>.<env>.<team>.<zone>``  SRV, one per named port
- ``_<port>._<tcp|udp>.<env>.<team>.<zone>``  SRV, every app of the environment with a
  port of that name (service discovery: "which apps of dev speak http?")
- ``<device>.<team>.<zone>``  A, the device's mesh IP
- ``<node>.nodes.<team>.<zone>``  A, the node's mesh IP in this team
- the apex: SOA and NS (``ns.<team>.<zone>``, with an A when the server's address is known)

A name that exists without the asked type (or an empty non-terminal such as
``dev.acme.kled.internal``) is NODATA; a name that does not exist is NXDOMAIN; both carry
the zone's SOA in the authority section, whose minimum (5 s) is the negative TTL.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dnslib import NS, QTYPE, RCODE, RR, SOA, SRV, A, DNSLabel, DNSRecord

TTL = 5
DEFAULT_ZONE = "kled.internal"
_SERIALS = itertools.count(int(time.time()))


class PortLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def protocol(self) -> str: ...


class AppLike(Protocol):
    @property
    def ip(self) -> str: ...
    @property
    def ports(self) -> Sequence[PortLike]: ...


class RecordSource(Protocol):
    """What ``apply`` reads: any object shaped like ``RecordSet``.

    The mesh controller (``kled.control``) keeps its own record sets of this shape, since
    the two layers may not import each other; the lead wires one to the other.
    """

    @property
    def zone(self) -> str: ...
    @property
    def apps(self) -> Mapping[tuple[str, str], AppLike]: ...
    @property
    def devices(self) -> Mapping[str, str]: ...
    @property
    def nodes(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class NamedPort:
    name: str
    port: int
    protocol: str = "TCP"  # TCP | UDP


@dataclass(frozen=True)
class AppRecord:
    ip: str
    ports: tuple[NamedPort, ...] = ()


@dataclass
class RecordSet:
    """Every name of one team: its apps (by environment), devices and nodes."""

    zone: str = DEFAULT_ZONE
    apps: dict[tuple[str, str], AppRecord] = field(default_factory=dict)  # (env, app)
    devices: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)

    def copy(self) -> RecordSet:
        return RecordSet(self.zone, dict(self.apps), dict(self.devices), dict(self.nodes))


def record_names(team: str, records: RecordSource) -> dict[str, list[tuple[int, str]]]:
    """Owner name (lower case, trailing dot) → [(type, text)] for one team's records."""
    apex = apex_of(team, records.zone)
    out: dict[str, list[tuple[int, str]]] = {}
    for (env, app), rec in records.apps.items():
        host = f"{app}.{env}.{apex}".lower()
        out.setdefault(host, []).append((QTYPE.A, rec.ip))
        for p in rec.ports:
            service = f"_{p.name}._{p.protocol.lower()}"
            srv = f"0 0 {p.port} {host}"
            out.setdefault(f"{service}.{host}".lower(), []).append((QTYPE.SRV, srv))
            # The environment-wide set: every app of the environment with this port.
            out.setdefault(f"{service}.{env}.{apex}".lower(), []).append((QTYPE.SRV, srv))
    for name, ip in records.devices.items():
        out.setdefault(f"{name}.{apex}".lower(), []).append((QTYPE.A, ip))
    for name, ip in records.nodes.items():
        out.setdefault(f"{name}.nodes.{apex}".lower(), []).append((QTYPE.A, ip))
    return out


def apex_of(team: str, zone: str) -> str:
    return f"{team}.{zone.strip('.')}.".lower()


@dataclass
class _Zone:
    team: str
    apex: str
    serial: int
    #: name → type → records
    names: dict[str, dict[int, list[RR]]]
    #: names that exist only because something lives below them
    empty: frozenset[str]
    soa: RR


class RecordIndex:
    """All team zones, answering by name in O(1)."""

    def __init__(self, ns_address: str | None = None) -> None:
        self._zones: dict[str, _Zone] = {}  # apex → zone
        self._team_apex: dict[str, str] = {}
        self._ns_address = ns_address
        #: bumped on every change, so that cached answers can be dropped
        self.generation = 0

    def apply(self, team: str, records: RecordSource | None) -> None:
        """Replace every record of ``team`` at once (None: the team is gone)."""
        if records is None:
            self.remove(team)
            return
        apex = apex_of(team, records.zone)
        serial = next(_SERIALS)
        names: dict[str, dict[int, list[RR]]] = {}
        for owner, entries in record_names(team, records).items():
            types = names.setdefault(owner, {})
            for rtype, value in entries:
                types.setdefault(rtype, []).append(_rr(owner, rtype, value))
        ns_name = f"ns.{apex}"
        soa = RR(
            apex,
            QTYPE.SOA,
            ttl=TTL,
            rdata=SOA(ns_name, f"hostmaster.{apex}", (serial, 3600, 600, 86400, TTL)),
        )
        apex_types = names.setdefault(apex, {})
        apex_types[QTYPE.SOA] = [soa]
        apex_types[QTYPE.NS] = [RR(apex, QTYPE.NS, ttl=TTL, rdata=NS(ns_name))]
        if self._ns_address:
            names.setdefault(ns_name, {}).setdefault(QTYPE.A, []).append(
                _rr(ns_name, QTYPE.A, self._ns_address)
            )
        empty = set()
        for owner in names:
            parent = owner
            while True:
                parent = parent.partition(".")[2]
                if len(parent) <= len(apex) or parent in names:
                    break
                empty.add(parent)
        zone = _Zone(team, apex, serial, names, frozenset(empty), soa)
        old_apex = self._team_apex.get(team)
        if old_apex is not None and old_apex != apex:
            self._zones.pop(old_apex, None)
        self._zones[apex] = zone
        self._team_apex[team] = apex
        self.generation += 1

    def remove(self, team: str) -> None:
        apex = self._team_apex.pop(team, None)
        if apex is not None:
            self._zones.pop(apex, None)
            self.generation += 1

    def teams(self) -> list[str]:
        return sorted(self._team_apex)

    def authoritative_for(self, qname: str) -> bool:
        return self._zone_of(qname.lower()) is not None

    def _zone_of(self, name: str) -> _Zone | None:
        # Walk up the labels: at most as many lookups as the name has labels.
        while name:
            zone = self._zones.get(name)
            if zone is not None:
                return zone
            name = name.partition(".")[2]
        return None

    def answer(self, request: DNSRecord) -> DNSRecord | None:
        """The authoritative reply to ``request``, or None when no team zone holds its name."""
        question = request.q
        qname = str(question.qname).lower()
        zone = self._zone_of(qname)
        if zone is None:
            return None
        reply = request.reply(ra=1, aa=1)
        reply.header.ad = 0  # no DNSSEC here: nothing is authenticated
        types = zone.names.get(qname)
        qtype = question.qtype
        if types is None:
            if qname not in zone.empty:
                reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(zone.soa)
            return reply
        if qtype == QTYPE.ANY:
            found = [rr for rrs in types.values() for rr in rrs]
        else:
            found = types.get(qtype, [])
        if not found:
            reply.add_auth(zone.soa)
            return reply
        for rr in found:
            reply.add_answer(_named(rr, question.qname))
        if qtype == QTYPE.SRV:
            targets = {str(rr.rdata.target).lower() for rr in found}
            for target in sorted(targets):
                for rr in zone.names.get(target, {}).get(QTYPE.A, []):
                    reply.add_ar(rr)
        elif qname == zone.apex and qtype == QTYPE.NS:
            for rr in zone.names.get(f"ns.{zone.apex}", {}).get(QTYPE.A, []):
                reply.add_ar(rr)
        return reply


def _rr(owner: str, rtype: int, value: str) -> RR:
    if rtype == QTYPE.A:
        return RR(owner, QTYPE.A, ttl=TTL, rdata=A(value))
    priority, weight, port, target = value.split()
    return RR(
        owner,
        QTYPE.SRV,
        ttl=TTL,
        rdata=SRV(int(priority), int(weight), int(port), target),
    )


def _named(rr: RR, qname: DNSLabel) -> RR:
    """``rr`` under the name exactly as asked (resolvers that randomise case check it)."""
    return RR(qname, rr.rtype, rr.rclass, rr.ttl, rr.rdata)
