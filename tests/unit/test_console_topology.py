"""The mesh drawing as data (``kled.ui.topology``): who peers with whom, the age of each
handshake, apps behind their gateways, intercepts marked, and a 100-peer team grouped per
owner so that no two boxes overlap. Also the handshakes a heartbeat leaves in the usage
book, which the drawing reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kled.control.usage import UsageBook
from kled.resources.hoststate import Capacity, NodeHeartbeat, TeamMeshReport
from kled.ui.topology import GROUP_ABOVE, Box, age_of, draw

NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
KEY = {name: name[0].upper() * 43 + "=" for name in ("a1", "b2", "c3", "laptop", "ws")}


def node(name: str, team: str = "acme", ready: bool = True) -> dict[str, Any]:
    mesh = {team: {"ip": f"100.64.0.{len(name)}", "publicKey": KEY.get(name, "")}}
    return {
        "metadata": {"name": name},
        "status": {"phase": "Ready" if ready else "NotReady", "mesh": mesh},
    }


def device(name: str, owner: str, kind: str = "laptop") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "team": "acme"},
        "spec": {"owner": owner, "kind": kind, "publicKey": KEY.get(name, f"{name}=")},
        "status": {"ip": "100.64.1.9"},
    }


def app(name: str, replicas: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "environment": "dev"},
        "status": {
            "ip": "100.64.128.4",
            "phase": "Running",
            "replicas": [
                {"index": i, "node": n, "podIP": ip} for i, (n, ip) in enumerate(replicas)
            ],
        },
    }


def test_handshake_ages_read_as_a_person_would() -> None:
    assert age_of(None, NOW) == ("never", "never")
    assert age_of(NOW - timedelta(seconds=12), NOW) == ("fresh", "12 s ago")
    assert age_of(NOW - timedelta(minutes=5), NOW) == ("stale", "5 min ago")
    assert age_of(NOW - timedelta(hours=3), NOW) == ("old", "3 h ago")


def test_peerings_are_coloured_by_their_latest_handshake() -> None:
    handshakes = {
        "a1": {KEY["laptop"]: NOW - timedelta(seconds=30), KEY["b2"]: NOW - timedelta(hours=1)},
        # b2 saw a1 more recently than a1 saw b2: the pair is as fresh as the freshest
        "b2": {KEY["a1"]: NOW - timedelta(seconds=5)},
    }
    other_team = node("c3", team="other")
    d = draw(
        "acme",
        [node("a1"), node("b2", ready=False), other_team],
        [device("laptop", "olga"), device("ws", "olga", kind="workspace")],
        [app("api", [("a1", "10.0.0.2"), ("b2", "10.0.1.2")])],
        [
            {
                "metadata": {"name": "api-laptop", "environment": "dev"},
                "spec": {"app": "api", "device": "laptop"},
                "status": {"phase": "Active"},
            }
        ],
        handshakes,
        NOW,
    )
    by_id = {b.id: b for b in d.boxes}
    assert "node-c3" not in by_id  # another team's gateway is not drawn
    assert by_id["node-b2"].classes == "node not-ready"
    assert by_id["device-ws"].kind == "workspace"
    seen = {(p.peer, p.gateway): (p.age, p.seen) for p in d.peerings}
    assert seen[("a1", "b2")] == ("fresh", "5 s ago")
    assert seen[("laptop", "a1")] == ("fresh", "30 s ago")
    assert seen[("laptop", "b2")] == ("never", "never")
    assert seen[("ws", "a1")] == ("never", "never")
    api = by_id["app-dev-api"]
    assert "intercepted" in api.classes
    assert api.lines == [
        "#0 · a1 · 10.0.0.2",
        "#1 · b2 · 10.0.1.2",
        "intercepted → laptop (Active)",
    ]
    routes = [e.title for e in d.edges if e.age == "route"]
    assert routes == [
        "100.64.128.4 → a1: replicas 10.0.0.2",
        "100.64.128.4 → b2: replicas 10.0.1.2",
    ]
    assert d.summary.startswith("2 nodes, 2 devices, 1 apps, 1 intercepts; ")


def _overlap(boxes: list[Box]) -> list[tuple[str, str]]:
    clashes = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if a.x == b.x and a.y < b.y + b.h and b.y < a.y + a.h:
                clashes.append((a.id, b.id))
    return clashes


def test_a_hundred_peers_are_grouped_per_owner_and_nothing_overlaps() -> None:
    owners = [f"user{i}" for i in range(9)]
    devices = [device(f"dev{i}", owners[i % 9]) for i in range(97)]
    recent = {f"dev{i}=": NOW - timedelta(seconds=10) for i in range(0, 97, 2)}
    d = draw(
        "acme",
        [node("a1"), node("b2"), node("c3")],
        devices,
        [app(f"app{i}", [("a1", f"10.0.0.{i}")]) for i in range(20)],
        [],
        {"a1": recent},
        NOW,
    )
    assert d.grouped
    groups = [b for b in d.boxes if b.kind == "owner"]
    assert [b.label for b in groups][:2] == ["user0 · 11 devices", "user1 · 11 devices"]
    assert len(groups) == 9
    assert _overlap(d.boxes) == []
    assert max(b.y + b.h for b in d.boxes) <= d.height
    row = next(p for p in d.peerings if p.owner == "user0" and p.gateway == "a1")
    assert row.age == "fresh" and row.seen.startswith("6 of 11 fresh")
    assert len(d.peerings) == 9 * 3 + 3  # owner groups by nodes, and the node pairs


def test_up_to_the_limit_each_device_is_drawn() -> None:
    devices = [device(f"dev{i}", "olga") for i in range(GROUP_ABOVE)]
    d = draw("acme", [node("a1")], devices, [], [], {}, NOW)
    assert not d.grouped
    assert sum(1 for b in d.boxes if b.kind == "device") == GROUP_ABOVE
    assert _overlap(d.boxes) == []


def test_the_usage_book_keeps_each_nodes_latest_handshakes_per_team() -> None:
    clock = [100.0]
    book = UsageBook(stale_after=60, clock=lambda: clock[0])
    report = TeamMeshReport(
        public_key=KEY["a1"], listen_port=51820, handshakes={KEY["laptop"]: NOW}
    )
    book.record(
        NodeHeartbeat(
            node="a1", capacity=Capacity(cpu_millicores=1000, memory_bytes=1), mesh={"acme": report}
        )
    )
    assert book.handshakes("acme") == {"a1": {KEY["laptop"]: NOW}}
    assert book.handshakes("other") == {}
    clock[0] += 61  # a node that stopped heartbeating says nothing any more
    assert book.handshakes("acme") == {}


@settings(deadline=None, max_examples=60)
@given(
    st.integers(0, 150),
    st.integers(1, 20),
    st.integers(0, 5),
    st.lists(st.integers(0, 4), max_size=25),
)
def test_no_two_boxes_overlap_whatever_the_team(
    devices: int, owners: int, nodes: int, replicas_per_app: list[int]
) -> None:
    names = [f"n{i}" for i in range(nodes)]
    apps = [
        app(f"app{i}", [(names[j % nodes], f"10.0.{i}.{j}") for j in range(count)] if nodes else [])
        for i, count in enumerate(replicas_per_app)
    ]
    d = draw(
        "acme",
        [node(n) for n in names],
        [device(f"d{i}", f"u{i % owners}") for i in range(devices)],
        apps,
        [],
        {},
        NOW,
    )
    assert _overlap(d.boxes) == []
    assert all(b.y + b.h <= d.height and b.x + b.w <= d.width for b in d.boxes)
    assert d.grouped == (devices > GROUP_ABOVE)
