"""Whether an intercept's device is online, judged at each team gateway, and the services
as they should be rendered while it is not (issue 5 §4: offline → fallback → resumed).

The judgement is local to each gateway because only the gateways see the device's WireGuard
traffic, and because it must work while the control plane is away. A peer is alive while
it sends something: a handshake, or any received bytes — a Kled device sends a keepalive
every few seconds (``PersistentKeepalive``), whereas WireGuard renews a handshake only
every two minutes, too rarely to notice an absence within seconds. A peer first seen is
given ``offline_after`` seconds of grace, so that an agent restart never moves traffic.

``effective_team`` is a pure function of the desired ``TeamNetwork`` and that judgement:
intercepts with ``on_device_offline == "fallback"`` whose device is offline are left out,
so the service's DNAT goes back to its replicas; ``keep`` intercepts stay as they are.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kled.agent.net.wireguard import InterfaceStatus
from kled.resources.netstate import Peer, Service, TeamNetwork

#: seconds without a handshake or a received byte after which a device is offline
OFFLINE_AFTER = 15.0
#: how often a device sends a keepalive to each node (``PersistentKeepalive``): well under
#: ``OFFLINE_AFTER``, so that an idle but present device is never judged offline
DEVICE_KEEPALIVE = 5


@dataclass
class PeerLiveness:
    """Last signs of life of a team interface's peers, from successive ``wg show dump``."""

    offline_after: float = OFFLINE_AFTER
    clock: Callable[[], float] = time.monotonic
    #: public key → (rx bytes last seen, monotonic time of the last sign of life)
    _seen: dict[str, tuple[int, float]] = field(default_factory=dict)

    def observe(self, status: InterfaceStatus, wall_now: datetime | None = None) -> None:
        now = self.clock()
        wall_now = wall_now or datetime.now(UTC)
        present = set()
        for peer in status.peers:
            present.add(peer.public_key)
            before = self._seen.get(peer.public_key)
            fresh = peer.latest_handshake is not None and (
                (wall_now - peer.latest_handshake).total_seconds() <= self.offline_after
            )
            if before is None or before[0] != peer.rx_bytes or fresh:
                self._seen[peer.public_key] = (peer.rx_bytes, now)
        for gone in set(self._seen) - present:
            del self._seen[gone]

    def alive(self, public_key: str) -> bool:
        """Alive, or not judged yet (never observed): both keep traffic where it is."""
        seen = self._seen.get(public_key)
        return seen is None or self.clock() - seen[1] <= self.offline_after


def peer_for(peers: tuple[Peer, ...], ip: str) -> Peer | None:
    """The peer whose allowed IPs route ``ip`` (the most specific one), if any."""
    address = ipaddress.IPv4Address(ip)
    best: tuple[int, Peer] | None = None
    for peer in peers:
        for net_text in peer.allowed_ips:
            net = ipaddress.ip_network(net_text)
            if address in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, peer)
    return None if best is None else best[1]


def _online(team: TeamNetwork, alive: Callable[[str], bool], ip: str) -> bool:
    peer = peer_for(team.peers, ip)
    # A target this gateway has no peer for is not its to judge.
    return peer is None or alive(peer.public_key)


def effective_service(team: TeamNetwork, service: Service, alive: Callable[[str], bool]) -> Service:
    intercept = service.intercept
    if (
        intercept is not None
        and intercept.on_device_offline == "fallback"
        and not _online(team, alive, intercept.target_ip)
    ):
        intercept = None
    personal = tuple(
        p
        for p in service.personal
        if p.on_device_offline == "keep" or _online(team, alive, p.target_ip)
    )
    if intercept is service.intercept and personal == service.personal:
        return service
    return service.model_copy(update={"intercept": intercept, "personal": personal})


def effective_team(team: TeamNetwork, alive: Callable[[str], bool]) -> TeamNetwork:
    """``team`` with the intercepts of offline devices (``fallback``) left out."""
    services = tuple(effective_service(team, s, alive) for s in team.services)
    if all(a is b for a, b in zip(services, team.services, strict=True)):
        return team
    return team.model_copy(update={"services": services})


def intercept_entry(env: str, app: str, ip: str, header: tuple[str, str] | None = None) -> str:
    """How gateways name an intercept in their reports: ``env/app→ip`` (global) or
    ``env/app[header=value]→ip`` (personal; the header lower-case, the value stripped)."""
    if header is None:
        return f"{env}/{app}→{ip}"
    return f"{env}/{app}[{header[0].strip().lower()}={header[1].strip()}]→{ip}"


def fallen_back(desired: TeamNetwork, effective: TeamNetwork) -> list[str]:
    """``env/app→ip`` of every intercept left out, for logs and status reports."""
    out: list[str] = []
    for want, have in zip(desired.services, effective.services, strict=True):
        if want.intercept is not None and have.intercept is None:
            out.append(intercept_entry(want.env, want.name, want.intercept.target_ip))
        kept = {(p.header, p.value) for p in have.personal}
        out.extend(
            intercept_entry(want.env, want.name, p.target_ip, (p.header, p.value))
            for p in want.personal
            if (p.header, p.value) not in kept
        )
    return out


def intercepts_of(team: TeamNetwork) -> list[str]:
    """Every intercept ``team`` asks its gateway for, named as ``intercept_entry`` does:
    what a gateway that applied ``team`` reports (falling back on some of them or not)."""
    out: list[str] = []
    for service in team.services:
        if service.intercept is not None:
            out.append(intercept_entry(service.env, service.name, service.intercept.target_ip))
        out.extend(
            intercept_entry(service.env, service.name, p.target_ip, (p.header, p.value))
            for p in service.personal
        )
    return sorted(out)
