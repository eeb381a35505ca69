"""Host networks are recomputed only when a field they depend on changes."""

from __future__ import annotations

from typing import Any

from kled.control.netdocs import NetworkDocs
from kled.store.objects import Event

_seq = 0


def event(kind: str, name: str, kind_of: str = "MODIFIED", team: str = "", **parts: Any) -> Event:
    global _seq
    _seq += 1
    meta: dict[str, Any] = {"name": name}
    if team:
        meta.update(team=team, environment="dev")
    doc = {"kind": kind, "metadata": meta, **parts}
    return Event(_seq, kind_of, kind, team, "dev" if team else "", name, doc)


def node(**status: Any) -> Event:
    return event("Node", "n1", spec={"address": "198.18.0.1"}, status=status)


def test_a_heartbeat_changes_nothing_but_an_address_does() -> None:
    docs = NetworkDocs()
    mesh = {"acme": {"ip": "100.65.0.1", "podSubnet": "100.65.8.0/24", "publicKey": "k"}}
    assert docs.apply(node(mesh=mesh, lastHeartbeat="t1"))  # new
    assert not docs.apply(node(mesh=mesh, lastHeartbeat="t2"))
    handshakes = {"acme": {**mesh["acme"], "handshakes": {"x": "t"}}}
    assert not docs.apply(node(mesh=handshakes, lastHeartbeat="t3"))
    moved = {"acme": {**mesh["acme"], "podSubnet": "100.65.9.0/24"}}
    assert docs.apply(node(mesh=moved, lastHeartbeat="t4"))
    assert docs.items("Node")[0]["status"]["lastHeartbeat"] == "t4"
    assert docs.apply(event("Node", "n1", kind_of="DELETED"))
    assert not docs.apply(event("Node", "n1", kind_of="DELETED"))  # already gone


def test_an_app_matters_for_its_ports_ips_and_running_replicas_not_restart_counts() -> None:
    docs = NetworkDocs()

    def app(state: str, restarts: int, ports: int = 80) -> Event:
        return event(
            "App", "api", team="acme",
            spec={"ports": [{"port": ports}]},
            status={"ip": "100.65.4.1", "replicas": [
                {"index": 0, "state": state, "restarts": restarts, "node": "n1"}
            ]},
        )  # fmt: skip

    assert docs.apply(app("Running", 0))
    assert not docs.apply(app("Running", 3))
    assert docs.apply(app("Failed", 3))
    assert docs.apply(app("Failed", 3, ports=81))
    assert not docs.apply(event("Secret", "s", team="acme"))  # not a network kind


def test_a_replica_turning_ready_or_not_ready_matters() -> None:
    docs = NetworkDocs()

    def app(ready: bool | None) -> Event:
        entry: dict[str, Any] = {"index": 0, "state": "Running", "node": "n1"}
        if ready is not None:
            entry["ready"] = ready
        return event("App", "api", team="acme", spec={"ports": [{"port": 80}]},
                     status={"ip": "100.65.4.1", "replicas": [entry]})  # fmt: skip

    assert docs.apply(app(None))
    assert docs.apply(app(False))
    assert not docs.apply(app(False))
    assert docs.apply(app(True))
