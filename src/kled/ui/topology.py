"""A team's mesh as a drawing: who peers with whom, how fresh each WireGuard peering is,
which apps sit behind which gateways.

Three columns, left to right: the devices and workspaces of the team (grouped per owner
when there are more than ``GROUP_ABOVE``, so a 100-peer team stays readable), the nodes
(the team's gateways, meshed fully with each other: arcs between them), and the apps (their
service IP, their replicas with pod IPs, an edge to each node running one; intercepted apps
marked). Each peering is an edge coloured by the age of its latest handshake, as the nodes
reported it in their heartbeats.

Pure: documents, handshakes and the clock in, positioned shapes out; the template draws
them as SVG (no script). The same facts come out as rows for a table, the drawing's text
equivalent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: devices drawn one by one up to this many; beyond, one box per owner
GROUP_ABOVE = 40
#: a handshake younger than this is a live peering (WireGuard re-handshakes every 2 min)
FRESH_SECONDS = 180
#: older than fresh but younger than this: the peer went quiet a while ago
STALE_SECONDS = 900

COLUMN_X = (16, 360, 700)
BOX_W = (220, 200, 260)
NODE_H, DEVICE_H, APP_H, REPLICA_H, GAP, TOP = 52, 40, 44, 16, 12, 40


@dataclass
class Box:
    id: str
    kind: str  # device | workspace | owner | node | app
    x: int
    y: int
    w: int
    h: int
    label: str
    detail: str = ""
    lines: list[str] = field(default_factory=list)
    classes: str = ""
    title: str = ""

    @property
    def left(self) -> tuple[int, int]:
        return self.x, self.y + self.h // 2

    @property
    def right(self) -> tuple[int, int]:
        return self.x + self.w, self.y + self.h // 2


@dataclass
class Edge:
    path: str
    age: str  # fresh | stale | old | never | route
    title: str


@dataclass
class Peering:
    """One row of the text equivalent: a peer, its gateway, the handshake between them."""

    peer: str
    kind: str
    owner: str
    ip: str
    gateway: str
    age: str
    seen: str


@dataclass
class Drawing:
    width: int
    height: int
    boxes: list[Box]
    edges: list[Edge]
    peerings: list[Peering]
    grouped: bool
    summary: str


def age_of(when: datetime | None, now: datetime) -> tuple[str, str]:
    """The class of a handshake's age and how it reads: ``("fresh", "12 s ago")``."""
    if when is None:
        return "never", "never"
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 120:
        text = f"{seconds} s ago"
    elif seconds < 7200:
        text = f"{seconds // 60} min ago"
    else:
        text = f"{seconds // 3600} h ago"
    if seconds < FRESH_SECONDS:
        return "fresh", text
    return ("stale" if seconds < STALE_SECONDS else "old"), text


def _latest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _meta(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("metadata") or {}


def _curve(a: tuple[int, int], b: tuple[int, int]) -> str:
    (x1, y1), (x2, y2) = a, b
    mid = (x1 + x2) // 2
    return f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"


def draw(
    team: str,
    nodes: Sequence[Mapping[str, Any]],
    devices: Sequence[Mapping[str, Any]],
    apps: Sequence[Mapping[str, Any]],
    intercepts: Sequence[Mapping[str, Any]],
    handshakes: Mapping[str, Mapping[str, datetime]],
    now: datetime,
) -> Drawing:
    """The team's mesh at ``now``; ``handshakes`` is node → {peer key → latest handshake}."""
    used_nodes = {
        str(r.get("node"))
        for a in apps
        for r in (a.get("status") or {}).get("replicas") or []
        if r.get("node")
    }
    gateways: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = []
    for doc in sorted(nodes, key=lambda d: str(_meta(d).get("name"))):
        name = str(_meta(doc).get("name"))
        entry = ((doc.get("status") or {}).get("mesh") or {}).get(team)
        if isinstance(entry, Mapping) or name in used_nodes:
            gateways.append((name, doc, entry if isinstance(entry, Mapping) else {}))

    boxes: list[Box] = []
    edges: list[Edge] = []
    peerings: list[Peering] = []

    # -- nodes (middle) -----------------------------------------------------------------
    node_box: dict[str, Box] = {}
    y = TOP
    for name, doc, entry in gateways:
        status = doc.get("status") or {}
        ready = status.get("phase") == "Ready"
        box = Box(
            id=f"node-{name}",
            kind="node",
            x=COLUMN_X[1],
            y=y,
            w=BOX_W[1],
            h=NODE_H,
            label=name,
            detail=str(entry.get("ip") or "no gateway"),
            classes="node" + ("" if ready else " not-ready"),
            title=f"node {name}: {status.get('phase') or 'Unknown'}, mesh IP "
            f"{entry.get('ip') or '—'}, pods {entry.get('podSubnet') or '—'}",
        )
        boxes.append(box)
        node_box[name] = box
        y += NODE_H + GAP
    nodes_bottom = y

    # nodes mesh fully: an arc to the right of the column for each pair
    keys = {name: str(entry.get("publicKey") or "") for name, _, entry in gateways}
    for i, (a, _, _) in enumerate(gateways):
        for b, _, _ in gateways[i + 1 :]:
            seen_ab = handshakes.get(a, {}).get(keys[b]) if keys[b] else None
            seen_ba = handshakes.get(b, {}).get(keys[a]) if keys[a] else None
            age, text = age_of(_latest(seen_ab, seen_ba), now)
            (x1, y1), (_, y2) = node_box[a].right, node_box[b].right
            bulge = x1 + 18 + (y2 - y1) // 6
            edges.append(
                Edge(
                    f"M{x1},{y1} C{bulge},{y1} {bulge},{y2} {x1},{y2}",
                    age,
                    f"{a} ↔ {b}: last handshake {text}",
                )
            )
            peerings.append(Peering(a, "node", "—", "", b, age, text))

    # -- devices (left) ------------------------------------------------------------------
    listed = sorted(
        devices, key=lambda d: (str((d.get("spec") or {}).get("owner")), str(_meta(d)["name"]))
    )
    grouped = len(listed) > GROUP_ABOVE
    y = TOP

    def seen_by(key: str, node: str) -> datetime | None:
        return handshakes.get(node, {}).get(key) if key else None

    if not grouped:
        for doc in listed:
            spec, status = doc.get("spec") or {}, doc.get("status") or {}
            name = str(_meta(doc).get("name"))
            kind = "workspace" if spec.get("kind") == "workspace" else "device"
            box = Box(
                id=f"device-{name}",
                kind=kind,
                x=COLUMN_X[0],
                y=y,
                w=BOX_W[0],
                h=DEVICE_H,
                label=name,
                detail=f"{status.get('ip') or '—'} · {spec.get('owner') or '?'}",
                classes=kind,
                title=f"{spec.get('kind') or 'laptop'} {name} of {spec.get('owner')}",
            )
            boxes.append(box)
            y += DEVICE_H + GAP
            key = str(spec.get("publicKey") or "")
            for node, nb in node_box.items():
                age, text = age_of(seen_by(key, node), now)
                edges.append(
                    Edge(_curve(box.right, nb.left), age, f"{name} ↔ {node}: last handshake {text}")
                )
                peerings.append(
                    Peering(
                        name,
                        spec.get("kind") or "laptop",
                        str(spec.get("owner") or "?"),
                        str(status.get("ip") or "—"),
                        node,
                        age,
                        text,
                    )
                )
    else:
        owners: dict[str, list[Mapping[str, Any]]] = {}
        for doc in listed:
            owners.setdefault(str((doc.get("spec") or {}).get("owner") or "?"), []).append(doc)
        for owner, docs in owners.items():
            workspaces = sum(1 for d in docs if (d.get("spec") or {}).get("kind") == "workspace")
            box = Box(
                id=f"owner-{owner}",
                kind="owner",
                x=COLUMN_X[0],
                y=y,
                w=BOX_W[0],
                h=DEVICE_H,
                label=f"{owner} · {len(docs)} devices",
                detail=f"{workspaces} workspaces" if workspaces else "",
                classes="owner",
                title=f"{len(docs)} devices of {owner}",
            )
            boxes.append(box)
            y += DEVICE_H + GAP
            for node, nb in node_box.items():
                times = [
                    seen_by(str((d.get("spec") or {}).get("publicKey") or ""), node) for d in docs
                ]
                fresh = sum(1 for t in times if age_of(t, now)[0] == "fresh")
                age, text = age_of(_latest(*times), now)
                edges.append(
                    Edge(
                        _curve(box.right, nb.left),
                        age,
                        f"{owner}'s devices ↔ {node}: {fresh} of {len(docs)} fresh, "
                        f"latest handshake {text}",
                    )
                )
                peerings.append(
                    Peering(
                        f"{len(docs)} devices",
                        "owner",
                        owner,
                        "—",
                        node,
                        age,
                        f"{fresh} of {len(docs)} fresh, latest {text}",
                    )
                )
    devices_bottom = y

    # -- apps (right): service IP in front, replicas behind, intercepts marked --------------
    taken: dict[tuple[str, str], list[str]] = {}
    for it in intercepts:
        spec = it.get("spec") or {}
        phase = str((it.get("status") or {}).get("phase") or "Pending")
        where = (str(_meta(it).get("environment")), str(spec.get("app")))
        taken.setdefault(where, []).append(f"{spec.get('device')} ({phase})")
    y = TOP
    for doc in sorted(
        apps, key=lambda d: (str(_meta(d).get("environment")), str(_meta(d).get("name")))
    ):
        meta, status = _meta(doc), doc.get("status") or {}
        env, name = str(meta.get("environment")), str(meta.get("name"))
        replicas = [r for r in status.get("replicas") or [] if r.get("node")]
        by = taken.get((env, name), [])
        lines = [f"#{r.get('index')} · {r.get('node')} · {r.get('podIP') or '—'}" for r in replicas]
        if by:
            lines.append("intercepted → " + ", ".join(by))
        height = APP_H + REPLICA_H * len(lines)
        box = Box(
            id=f"app-{env}-{name}",
            kind="app",
            x=COLUMN_X[2],
            y=y,
            w=BOX_W[2],
            h=height,
            label=f"{env}/{name}",
            detail=f"service {status.get('ip') or '—'}",
            lines=lines,
            classes="app" + (" intercepted" if by else ""),
            title=f"app {env}/{name}: {status.get('phase') or 'Pending'}"
            + (f", intercepted by {', '.join(by)}" if by else ""),
        )
        boxes.append(box)
        y += height + GAP
        for node in sorted({str(r["node"]) for r in replicas}):
            if node in node_box:
                pods = [str(r.get("podIP") or "—") for r in replicas if r["node"] == node]
                edges.append(
                    Edge(
                        _curve(node_box[node].right, box.left),
                        "route",
                        f"{status.get('ip') or 'service'} → {node}: replicas {', '.join(pods)}",
                    )
                )
    apps_bottom = y

    height = max(nodes_bottom, devices_bottom, apps_bottom, TOP + NODE_H) + TOP // 2
    summary = (
        f"{len(gateways)} nodes, {len(devices)} devices"
        + (
            f" in {len({p.owner for p in peerings if p.kind == 'owner'})} owner groups"
            if grouped
            else ""
        )
        + f", {len(apps)} apps, {len(intercepts)} intercepts; "
        f"{sum(1 for p in peerings if p.age == 'fresh')} of {len(peerings)} peerings fresh"
    )
    return Drawing(
        width=COLUMN_X[2] + BOX_W[2] + 16,
        height=height,
        boxes=boxes,
        edges=edges,
        peerings=peerings,
        grouped=grouped,
        summary=summary,
    )
