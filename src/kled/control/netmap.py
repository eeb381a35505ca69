"""Who peers with whom on a team mesh, kept incrementally as peers come and go.

The rules: the nodes of a team mesh fully with each other; a device (a laptop, a phone, a
workspace) peers with every node of its team and never with another device. Teams never
share peers.

A full rebuild of every peer's map costs O(peers²) at each change, which is how mesh
control planes fall over at a few thousand peers. Here every change returns only the
deltas for the recipients it affects, computed from per-team indexes: a device joining
touches the team's nodes (and itself), a node joining touches every peer of its team,
an update touches the peers that have it in their map. ``full_map`` serves a peer that
(re)connects and needs its whole set. Pure data, no I/O: the mesh controller feeds it and
ships the deltas through the Message Office.

Service IPs are answered by every node's gateway (nftables DNAT), but a WireGuard peer set
cannot route one range to several peers, so a device reaches the team's service range
through one node: the team's first node (in the order they joined). That node appears in
devices' maps with the service range added to its allowed IPs; when it leaves, the next
node takes the range over, and every device of the team hears of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from kled.errors import InvalidInput, NotFound

PeerKind = Literal["node", "device"]


@dataclass(frozen=True)
class Peer:
    """One member of a team mesh, as the others must configure it."""

    id: str
    kind: PeerKind
    team: str
    public_key: str
    mesh_ip: str
    endpoint: str | None = None
    #: what the others route to this peer: its mesh /32, and a node's pod subnet
    allowed_ips: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "publicKey": self.public_key,
            "meshIP": self.mesh_ip,
            "endpoint": self.endpoint,
            "allowedIPs": list(self.allowed_ips),
        }


@dataclass
class PeerDelta:
    """The change to one recipient's peer set: peers to add, ids to drop, peers changed.

    A recipient applies ``removed`` first, then ``added``, then ``updated``; an id can be
    in both ``removed`` and ``added`` when a peer moved (it changed team or kind).
    """

    added: list[Peer] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[Peer] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": [p.as_dict() for p in self.added],
            "removed": list(self.removed),
            "updated": [p.as_dict() for p in self.updated],
        }

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


Deltas = dict[str, PeerDelta]


@dataclass
class _Team:
    nodes: dict[str, Peer] = field(default_factory=dict)
    devices: dict[str, Peer] = field(default_factory=dict)


class Netmap:
    """Every team's peers, with the deltas of each change."""

    def __init__(self) -> None:
        self._peers: dict[str, Peer] = {}
        self._teams: dict[str, _Team] = {}
        self._service_ranges: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def get(self, peer_id: str) -> Peer | None:
        return self._peers.get(peer_id)

    def peers(self, team: str | None = None) -> list[Peer]:
        if team is None:
            return list(self._peers.values())
        t = self._teams.get(team)
        return [] if t is None else [*t.nodes.values(), *t.devices.values()]

    # ---- changes -------------------------------------------------------------------

    def set_service_range(self, team: str, cidr: str | None) -> Deltas:
        """The team's service range, routed by devices through the team's first node."""
        if self._service_ranges.get(team) == cidr:
            return {}
        if cidr is None:
            self._service_ranges.pop(team, None)
        else:
            self._service_ranges[team] = cidr
        t = self._teams.get(team)
        gateway = _gateway(t)
        if t is None or gateway is None:
            return {}
        seen = self._device_view(team, gateway)
        return {d: PeerDelta(updated=[seen]) for d in t.devices}

    def load(self, peer: Peer) -> None:
        """Add or replace a peer without computing deltas: for building the map at start,
        when every recipient is sent its ``full_map`` anyway."""
        if peer.id in self._peers:
            self.leave(peer.id)
        team = self._teams.setdefault(peer.team, _Team())
        (team.nodes if peer.kind == "node" else team.devices)[peer.id] = peer
        self._peers[peer.id] = peer

    def join(self, peer: Peer) -> Deltas:
        """Add ``peer``; an id already present is an update."""
        if peer.kind not in ("node", "device"):
            raise InvalidInput(f"unknown peer kind {peer.kind!r}", field="kind")
        if peer.id in self._peers:
            return self.update(peer)
        team = self._teams.setdefault(peer.team, _Team())
        deltas: Deltas = {}
        self._peers[peer.id] = peer
        if peer.kind == "node":
            # Every other peer of the team gains the node; the node gains all of them.
            others = [*team.nodes.values(), *team.devices.values()]
            team.nodes[peer.id] = peer
            for node in others[: len(others) - len(team.devices)]:
                deltas[node.id] = PeerDelta(added=[peer])
            seen = self._device_view(peer.team, peer)
            for device_id in team.devices:
                deltas[device_id] = PeerDelta(added=[seen])
            deltas[peer.id] = PeerDelta(added=others)
        else:
            team.devices[peer.id] = peer
            for node in team.nodes.values():
                deltas[node.id] = PeerDelta(added=[peer])
            deltas[peer.id] = PeerDelta(added=self._device_map(peer.team, team))
        return deltas

    def leave(self, peer_id: str) -> Deltas:
        """Remove a peer; those that had it in their map drop it. Unknown ids: no deltas."""
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return {}
        team = self._teams[peer.team]
        if peer.kind == "node":
            was_gateway = _gateway(team) is peer
            del team.nodes[peer_id]
            holders = [*team.nodes.values(), *team.devices.values()]
        else:
            was_gateway = False
            del team.devices[peer_id]
            holders = list(team.nodes.values())
        deltas = {h.id: PeerDelta(removed=[peer_id]) for h in holders}
        successor = _gateway(team)
        if was_gateway and successor is not None and peer.team in self._service_ranges:
            # The next node carries the service range for the devices now.
            seen = self._device_view(peer.team, successor)
            for device_id in team.devices:
                deltas[device_id].updated.append(seen)
        if not team.nodes and not team.devices:
            del self._teams[peer.team]
        return deltas

    def update(self, peer: Peer) -> Deltas:
        """Replace a peer's key, address, endpoint or routes; a new id is a join.

        A peer that changes team or kind changes who it peers with, so it leaves and
        joins again; the deltas of both are merged per recipient.
        """
        old = self._peers.get(peer.id)
        if old is None:
            return self.join(peer)
        if old == peer:
            return {}
        if old.team != peer.team or old.kind != peer.kind:
            before = [p.id for p in self.full_map(peer.id)]
            deltas = _merge(self.leave(peer.id), self.join(peer))
            deltas[peer.id].removed[:0] = before
            return deltas
        team = self._teams[peer.team]
        self._peers[peer.id] = peer
        if peer.kind == "device":
            team.devices[peer.id] = peer
            return {n: PeerDelta(updated=[peer]) for n in team.nodes}
        team.nodes[peer.id] = peer
        deltas = {n: PeerDelta(updated=[peer]) for n in team.nodes if n != peer.id}
        seen = self._device_view(peer.team, peer)
        for device_id in team.devices:
            deltas[device_id] = PeerDelta(updated=[seen])
        return deltas

    # ---- whole maps ----------------------------------------------------------------

    def full_map(self, recipient: str) -> list[Peer]:
        """Every peer ``recipient`` must have, for a peer that (re)connects."""
        peer = self._peers.get(recipient)
        if peer is None:
            raise NotFound(f"peer {recipient} is not on any mesh")
        team = self._teams[peer.team]
        if peer.kind == "device":
            return self._device_map(peer.team, team)
        return [p for p in (*team.nodes.values(), *team.devices.values()) if p.id != recipient]

    def device_map(self, team: str) -> list[Peer]:
        """The peers any device of ``team`` must have (its nodes, the gateway node with the
        service range), whether or not the device has joined yet: what ``kled device join``
        is told before its key is known to the mesh."""
        t = self._teams.get(team)
        return [] if t is None else self._device_map(team, t)

    def _device_map(self, team_name: str, team: _Team) -> list[Peer]:
        return [self._device_view(team_name, n) for n in team.nodes.values()]

    def _device_view(self, team_name: str, node: Peer) -> Peer:
        """A node as devices see it: the gateway node also routes the service range."""
        cidr = self._service_ranges.get(team_name)
        team = self._teams.get(team_name)
        if cidr is None or team is None or _gateway(team) is not node:
            return node
        return replace(node, allowed_ips=(*node.allowed_ips, cidr))


def _gateway(team: _Team | None) -> Peer | None:
    """The node through which the team's devices reach service IPs: the first to join."""
    if team is None or not team.nodes:
        return None
    return next(iter(team.nodes.values()))


def _merge(first: Deltas, second: Deltas) -> Deltas:
    out: Deltas = {}
    for deltas in (first, second):
        for rid, d in deltas.items():
            into = out.setdefault(rid, PeerDelta())
            into.added.extend(d.added)
            into.removed.extend(d.removed)
            into.updated.extend(d.updated)
    return out
