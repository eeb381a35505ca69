"""Peers and meshes for the peer-sync tests (unit and against NATS)."""

from __future__ import annotations

import base64

from kled.control.netmap import Netmap, Peer


def key(n: int) -> str:
    return base64.b64encode(n.to_bytes(2, "big") * 16).decode()


def node(i: int, team: str = "acme", endpoint: str | None = None) -> Peer:
    return Peer(
        f"{team}/node/n{i}", "node", team, key(i), f"100.65.0.{i}",
        endpoint or f"198.18.0.{i}:16385", (f"100.65.0.{i}/32", f"100.65.{8 + i}.0/24"),
    )  # fmt: skip


def device(i: int, team: str = "acme") -> Peer:
    return Peer(
        f"{team}/device/d{i}", "device", team, key(1000 + i), f"100.65.1.{i}", None,
        (f"100.65.1.{i}/32",),
    )  # fmt: skip


def mesh(nodes: int, devices: int = 0) -> Netmap:
    netmap = Netmap()
    for i in range(1, nodes + 1):
        netmap.join(node(i))
    for i in range(1, devices + 1):
        netmap.join(device(i))
    return netmap
