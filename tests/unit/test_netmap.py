"""The netmap's delta rules: who hears about a join, a leave and an update, and nobody else."""

from __future__ import annotations

import pytest

from kled.control.netmap import Netmap, Peer, PeerDelta
from kled.errors import NotFound


def node(name: str, team: str = "acme", ip: str = "100.64.0.1", **kw: object) -> Peer:
    return Peer(
        id=f"{team}/node/{name}",
        kind="node",
        team=team,
        public_key=f"key-{team}-{name}",
        mesh_ip=ip,
        endpoint=kw.get("endpoint", "198.18.0.1:51820"),  # type: ignore[arg-type]
        allowed_ips=(f"{ip}/32", "100.64.8.0/24"),
    )


def device(name: str, team: str = "acme", ip: str = "100.64.0.9") -> Peer:
    return Peer(
        id=f"{team}/device/{name}",
        kind="device",
        team=team,
        public_key=f"key-{team}-{name}",
        mesh_ip=ip,
        allowed_ips=(f"{ip}/32",),
    )


def ids(peers: list[Peer]) -> set[str]:
    return {p.id for p in peers}


def mesh() -> tuple[Netmap, Peer, Peer, Peer, Peer]:
    m = Netmap()
    n1, n2, laptop, phone = node("n1"), node("n2"), device("laptop"), device("phone")
    for p in (n1, n2, laptop, phone):
        m.join(p)
    return m, n1, n2, laptop, phone


def test_a_joining_node_is_added_to_every_peer_of_its_team_and_gets_them_all() -> None:
    m, n1, n2, laptop, phone = mesh()
    m.join(node("other", team="beta"))
    n3 = node("n3")
    deltas = m.join(n3)
    assert set(deltas) == {n1.id, n2.id, laptop.id, phone.id, n3.id}  # not team beta
    for rid in (n1.id, n2.id, laptop.id, phone.id):
        assert deltas[rid] == PeerDelta(added=[n3])
    assert ids(deltas[n3.id].added) == {n1.id, n2.id, laptop.id, phone.id}
    assert ids(m.full_map(n3.id)) == {n1.id, n2.id, laptop.id, phone.id}


def test_a_joining_device_touches_only_the_team_nodes() -> None:
    m, n1, n2, laptop, phone = mesh()
    tablet = device("tablet")
    deltas = m.join(tablet)
    assert set(deltas) == {n1.id, n2.id, tablet.id}  # no other device hears of it
    assert deltas[n1.id] == PeerDelta(added=[tablet])
    assert ids(deltas[tablet.id].added) == {n1.id, n2.id}
    assert ids(m.full_map(laptop.id)) == {n1.id, n2.id}
    assert ids(m.full_map(n1.id)) == {n2.id, laptop.id, phone.id, tablet.id}


def test_leave_removes_the_peer_from_those_that_had_it() -> None:
    m, n1, n2, laptop, phone = mesh()
    assert m.leave(laptop.id) == {
        n1.id: PeerDelta(removed=[laptop.id]),
        n2.id: PeerDelta(removed=[laptop.id]),
    }
    deltas = m.leave(n2.id)
    assert deltas == {n1.id: PeerDelta(removed=[n2.id]), phone.id: PeerDelta(removed=[n2.id])}
    assert m.leave("acme/device/never-joined") == {}
    with pytest.raises(NotFound):
        m.full_map(laptop.id)
    assert ids(m.full_map(phone.id)) == {n1.id}


def test_an_endpoint_change_reaches_exactly_the_holders() -> None:
    m, n1, n2, laptop, phone = mesh()
    moved = node("n1", endpoint="198.18.5.5:51820")
    deltas = m.update(moved)
    assert set(deltas) == {n2.id, laptop.id, phone.id}
    assert all(d == PeerDelta(updated=[moved]) for d in deltas.values())
    assert m.update(moved) == {}  # nothing changed: nobody hears
    roaming = Peer(**{**laptop.__dict__, "endpoint": "203.0.113.7:41000"})
    assert set(m.update(roaming)) == {n1.id, n2.id}
    # join of a known id is an update
    assert m.join(roaming) == {}


def test_a_peer_moving_team_leaves_one_mesh_and_joins_the_other() -> None:
    m, n1, n2, laptop, _ = mesh()
    b1 = node("b1", team="beta")
    m.join(b1)
    moved = Peer(**{**laptop.__dict__, "team": "beta"})
    deltas = m.update(moved)
    assert deltas[n1.id] == PeerDelta(removed=[laptop.id])
    assert deltas[b1.id] == PeerDelta(added=[moved])
    assert deltas[laptop.id].removed == [n1.id, n2.id]
    assert ids(deltas[laptop.id].added) == {b1.id}


def test_teams_never_share_peers() -> None:
    m, n1, *_ = mesh()
    b1, b_dev = node("b1", team="beta"), device("dev", team="beta")
    m.join(b1)
    assert set(m.join(b_dev)) == {b1.id, b_dev.id}
    assert ids(m.full_map(n1.id)).isdisjoint({b1.id, b_dev.id})
    assert ids(m.full_map(b_dev.id)) == {b1.id}


def test_load_builds_the_same_maps_as_joins_without_deltas() -> None:
    joined, n1, n2, laptop, phone = mesh()
    loaded = Netmap()
    for p in (phone, n2, laptop, n1):
        loaded.load(p)
    for p in (n1, n2, laptop, phone):
        assert ids(loaded.full_map(p.id)) == ids(joined.full_map(p.id))
    # Later changes are deltas as usual.
    assert set(loaded.leave(n2.id)) == {n1.id, laptop.id, phone.id}


def routes(peers: list[Peer]) -> dict[str, tuple[str, ...]]:
    return {p.id: p.allowed_ips for p in peers}


def test_devices_reach_the_service_range_through_exactly_one_node() -> None:
    m, n1, n2, laptop, phone = mesh()
    deltas = m.set_service_range("acme", "100.64.4.0/22")
    # Only the devices hear of it: n1 (the first node) now routes the services for them.
    assert set(deltas) == {laptop.id, phone.id}
    (seen,) = deltas[laptop.id].updated
    assert seen.id == n1.id and seen.allowed_ips == (*n1.allowed_ips, "100.64.4.0/22")
    assert routes(m.full_map(laptop.id)) == {
        n1.id: (*n1.allowed_ips, "100.64.4.0/22"),
        n2.id: n2.allowed_ips,
    }
    # Nodes never see the range on each other: each answers service IPs itself.
    assert routes(m.full_map(n2.id))[n1.id] == n1.allowed_ips
    # A device joining gets the gateway's view at once.
    tablet = device("tablet")
    added = routes(m.join(tablet)[tablet.id].added)
    assert added[n1.id][-1] == "100.64.4.0/22" and added[n2.id] == n2.allowed_ips


def test_when_the_gateway_node_leaves_the_next_one_takes_the_service_range() -> None:
    m, n1, n2, laptop, phone = mesh()
    m.set_service_range("acme", "100.64.4.0/22")
    deltas = m.leave(n1.id)
    assert deltas[n2.id] == PeerDelta(removed=[n1.id])
    for d in (laptop.id, phone.id):
        assert deltas[d].removed == [n1.id]
        assert routes(deltas[d].updated) == {n2.id: (*n2.allowed_ips, "100.64.4.0/22")}
    # An endpoint change of the gateway keeps the range in what devices are sent.
    moved = node("n2", endpoint="198.18.9.9:51820")
    moved_deltas = m.update(moved)
    assert moved_deltas[laptop.id].updated[0].allowed_ips[-1] == "100.64.4.0/22"
    assert moved_deltas == {
        laptop.id: moved_deltas[laptop.id],
        phone.id: moved_deltas[phone.id],
    }  # n2 is the only node: no other node to tell
    # A second node joining does not take the range over.
    n3 = node("n3")
    joined = m.join(n3)
    assert joined[laptop.id].added == [n3]
